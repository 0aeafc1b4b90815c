"""`selfy tflite`: convert a trained model to TFLite / LiteRT (builtin ops only).

    selfy tflite runs/selfy_r18 --out selfy_r18_int8.tflite --quantize int8 \\
        --calibration-data data/ssv1 --report

MODEL is a training run directory (`RUN/checkpoints/best.keras` and
`RUN/labels.txt`) or a `.keras` file (with `--labels` unless a labels.txt
lies beside it). Writes the flatbuffer, the class names beside it
(`<out>.labels.txt`) and its evaluation view (`<out>.view.json`), checks
the converted model against the Keras one on a few random clips, and prints
one JSON line with the summary to stdout (`--report` adds size, op list and
per-op latency; see also `selfy tflite-inspect`).

With `--stream` (a causal model, docs/streaming.md) it converts the stream
model instead: inputs `frame` `[1, H, W, 3]` uint8 and the states, outputs
`logits`, `probabilities` and the new states; run it with
`serving.tflite_runtime.TFLiteStream`. The check then compares each
frame's logits with the Keras stream's.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np

from selfy_cli._help import HelpFormatter
from selfy_cli._options import DeferredChoices, add_labels_argument, add_model_argument

logger = logging.getLogger(__name__)


def _quantize_modes() -> tuple[str, ...]:
    from serving import tflite

    return tflite.QUANTIZE_MODES


def _input_dtypes() -> tuple[str, ...]:
    from serving import tflite

    return tflite.INPUT_DTYPES


def _convertible_stss_backends() -> list[str]:
    from selfy_tf import ops
    from serving import tflite

    return [name for name in ops.STSS_BACKENDS if name not in tflite.NON_CONVERTIBLE_STSS_BACKENDS]


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    from serving import tflite_calibration, tflite_inspect

    parser = subparsers.add_parser(
        "tflite",
        help="convert a model to TFLite / LiteRT (none, fp16, dynamic or int8)",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    add_model_argument(parser, keras_only=True)
    parser.add_argument("--out", required=True, help="output .tflite file")
    parser.add_argument(
        "--quantize",
        default="none",
        choices=DeferredChoices(_quantize_modes),
        metavar="MODE",
        help="none: float32; fp16: float16 weights; dynamic: int8 weights; "
        "int8: full-integer (needs --calibration-data)",
    )
    parser.add_argument(
        "--calibration-data",
        default=None,
        help="TFRecord dataset directory or glob pattern for int8 calibration",
    )
    parser.add_argument(
        "--calibration-split",
        default=None,
        help="split of --calibration-data to read; unset: validation, else train",
    )
    parser.add_argument(
        "--calibration-clips",
        type=int,
        default=tflite_calibration.DEFAULT_NUM_CLIPS,
        help="number of calibration clips",
    )
    parser.add_argument(
        "--input-dtype",
        default="uint8",
        choices=DeferredChoices(_input_dtypes),
        metavar="DTYPE",
        help="%(choices)s: dtype of the `frames` input (values 0..255 either way)",
    )
    add_labels_argument(parser)
    parser.add_argument(
        "--stss-backend",
        default=None,
        choices=DeferredChoices(_convertible_stss_backends),
        metavar="BACKEND",
        help="%(choices)s: STSS backend to trace with instead of the model's own",
    )
    parser.add_argument(
        "--check-clips",
        type=int,
        default=2,
        help="random clips on which the TFLite and Keras outputs are compared (0: skip)",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="also report size, op list and per-op latency",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=tflite_inspect.DEFAULT_NUM_THREADS,
        help="interpreter threads for the check and the report",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="convert the stream model of a causal model (one frame + states per call)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfy_tf.run_dir import load_model
    from serving import tflite, tflite_calibration, tflite_runtime

    tflite.check_quantize(args.quantize)
    if args.quantize == "int8" and args.calibration_data is None:
        raise ValueError(
            "`--quantize int8` needs `--calibration-data DIR` (TFRecord clips) to "
            "calibrate the activation ranges. Received: no --calibration-data. Or "
            "use `--quantize dynamic` (int8 weights, no calibration)."
        )
    if args.calibration_data is not None and args.quantize != "int8":
        logger.warning("--calibration-data is only used with --quantize int8; ignored")
    if args.check_clips < 0:
        raise ValueError(
            f"`--check-clips` must be 0 or more. Received: --check-clips={args.check_clips}."
        )
    loaded = load_model(
        args.model, args.labels, require_labels=True, keras_needed_for="selfy tflite converts the Keras layers"
    )
    model, labels, view = tflite.float32_model(loaded.model), loaded.labels, loaded.eval_view()
    num_frames, height, width = tflite.clip_shape(model)
    num_classes = int(model.outputs[0].shape[-1])
    representative = None
    if args.quantize == "int8":
        if height != width:
            raise ValueError(
                "int8 calibration reads square centre crops; the model takes "
                f"{height}x{width} frames."
            )
        representative = tflite_calibration.representative_dataset(
            args.calibration_data,
            view,
            num_clips=args.calibration_clips,
            input_dtype=args.input_dtype,
            split=args.calibration_split,
        )
    if args.stream:
        return _run_stream(args, model, labels, view, representative, (num_frames, height, width))
    model_bytes = tflite.convert_model(
        model,
        quantize=args.quantize,
        representative_dataset=representative,
        input_dtype=args.input_dtype,
        stss_backend=args.stss_backend,
    )
    labels_path = tflite.write_model(model_bytes, args.out, labels, view)
    summary = {
        "model": args.out,
        "labels": labels_path,
        "quantize": args.quantize,
        "input_dtype": args.input_dtype,
        "input_shape": [1, num_frames, height, width, 3],
        "eval_view": view.resize_settings(),
        "num_classes": num_classes,
        "size_bytes": len(model_bytes),
        "flex_ops": [],
    }
    if args.check_clips:
        classifier = tflite_runtime.TFLiteClassifier(args.out, num_threads=args.threads)
        _check(args, summary, (num_frames, height, width), "TFLite vs Keras",
               lambda clips: tflite.compare_with_keras(model, classifier, clips))
    return _report_and_print(args, summary)


def _check(args, summary: dict, clip_shape, title: str, compare) -> None:
    """Adds `compare(random clips)`'s parity figures to `summary` and logs them."""
    clips = np.random.default_rng(0).integers(0, 256, (args.check_clips, *clip_shape, 3), dtype=np.uint8)
    parity = compare(clips)
    summary.update({f"check_{key}": value for key, value in parity.items()})
    logger.info(
        "%s on %d random clips: max |logit diff| %.3g (%.3g of max |logit|), top-1 agreement %.2f",
        title, args.check_clips, parity["max_abs_diff"], parity["relative_max_abs_diff"],
        parity["top1_agreement"],
    )


def _report_and_print(args, summary: dict) -> int:
    """Adds the per-op report if asked, prints the summary's JSON line."""
    from serving import tflite_inspect

    if args.report:
        report = tflite_inspect.inspect_model(args.out, num_threads=args.threads)
        summary["report"] = report
        logger.info("%s", tflite_inspect.format_report(report))
    print(json.dumps(summary))
    return 0


def _run_stream(args, model, labels, view, representative, clip_shape) -> int:
    """`selfy tflite --stream`: convert, write, check and summarise the stream model."""
    from serving import stream, tflite, tflite_runtime

    if args.input_dtype != "uint8" or args.stss_backend is not None:
        logger.warning("--stream takes uint8 frames and has one STSS step: "
                       "--input-dtype and --stss-backend are ignored")
    calibration_clips = None
    if representative is not None:
        calibration_clips = [np.asarray(item["frames"], np.uint8) for item in representative()]
    model_bytes = stream.convert_stream_model(model, args.quantize, calibration_clips)
    # The view tells `selfy predict --stream` how to resize and crop frames.
    labels_path = tflite.write_model(model_bytes, args.out, labels, view)
    runtime = tflite_runtime.TFLiteStream(args.out, num_threads=args.threads)
    summary = {
        "model": args.out,
        "labels": labels_path,
        "stream": True,
        "quantize": args.quantize,
        "frame_shape": list(runtime.frame_shape),
        "state_shapes": {name: list(shape) for name, shape in runtime.state_shapes.items()},
        "num_classes": runtime.num_classes,
        "size_bytes": len(model_bytes),
    }
    if args.check_clips:
        _check(args, summary, clip_shape, "TFLite vs Keras stream",
               lambda clips: stream.compare_stream_with_keras(model, runtime, clips))
    return _report_and_print(args, summary)
