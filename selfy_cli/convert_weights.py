"""`selfy convert-weights`: official PyTorch checkpoint → Keras `.weights.h5`.

    selfy convert-weights ckpt.best.pth.tar selfy_tsm_r50_sthv1.weights.h5 \\
        --arch selfy_tsm_r50 --num-classes 174 --num-frames 8 \\
        --keras-out selfy_tsm_r50_sthv1.keras

Builds the named model, loads the checkpoint strictly (every tensor except
BatchNorm `num_batches_tracked` must be used), writes the weights (and
optionally a whole `.keras` model) atomically, then checks itself: a
plain-PyTorch reference of the same architecture loads the same checkpoint
and both run on one random clip; the logits difference and the
preprocessing difference are reported separately. One JSON line with the
summary goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import numpy as np

from selfy_cli._help import HelpFormatter
from selfy_cli._options import DeferredChoices
from selfy_tf.files import atomic_path

logger = logging.getLogger(__name__)


def _model_names() -> list[str]:
    from selfy_tf.models import list_models

    return list_models()


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    architectures = DeferredChoices(_model_names)
    parser = subparsers.add_parser(
        "convert-weights",
        help="convert an official PyTorch SELFY/TSM checkpoint to Keras weights",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("src", help="official checkpoint (.pth.tar with a state_dict)")
    parser.add_argument("dst", help="output Keras weights file, must end with .weights.h5")
    arch = parser.add_mutually_exclusive_group(required=True)
    arch.add_argument(
        "--arch", choices=architectures, metavar="ARCH", help="zoo architecture name: %(choices)s"
    )
    # The flag's earlier name; `--model` elsewhere names a trained model.
    arch.add_argument("--model", dest="arch", choices=architectures, metavar="ARCH", help=argparse.SUPPRESS)
    parser.add_argument("--num-classes", type=int, required=True, help="classes of the checkpoint")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip (T)")
    parser.add_argument("--input-size", type=int, default=224, help="frame height and width")
    parser.add_argument("--keras-out", default=None, help="also write the whole model as .keras")
    parser.add_argument(
        "--no-validate",
        action="store_true",
        help="skip the self-check against the PyTorch reference",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation clip")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfy_tf.models import create_model
    from selfy_tf.weights import load_official_checkpoint

    if not args.dst.endswith(".weights.h5"):
        raise ValueError(f"`dst` must end with '.weights.h5'. Received: dst={args.dst!r}.")
    if args.keras_out is not None and not args.keras_out.endswith(".keras"):
        raise ValueError(
            f"`--keras-out` must end with '.keras'. Received: --keras-out={args.keras_out!r}."
        )
    if not os.path.exists(args.src):
        raise FileNotFoundError(f"Checkpoint not found: {args.src!r}.")
    model = create_model(
        args.arch,
        num_classes=args.num_classes,
        num_frames=args.num_frames,
        input_size=args.input_size,
    )
    report = load_official_checkpoint(model, args.src, strict=True)
    summary = {"model": args.arch, **report.summary(), "weights": args.dst}

    with atomic_path(args.dst, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)
    logger.info("Wrote %s.", args.dst)
    if args.keras_out:
        from selfy_tf.eval_view import EvalView
        from selfy_tf.run_dir import save_model

        # The official test view (frames at 240x320, centre crop) travels with
        # the model, so `selfy eval model.keras` scores as the paper does.
        save_model(model, args.keras_out, EvalView(args.num_frames, args.input_size, eval_size=(240, 320)))
        summary["keras_model"] = args.keras_out
        logger.info("Wrote %s.", args.keras_out)

    if not args.no_validate:
        summary.update(_validate(model, args))
    print(json.dumps(summary))
    return 0


def _validate(model, args: argparse.Namespace) -> dict[str, object]:
    """Runs the PyTorch reference and the converted model on one random clip."""
    try:
        import torch

        from selfy_tf.weights import torch_reference
        from selfy_tf.weights._torch import load_torch_state_dict
        from selfy_tf.weights.official import normalize_official_keys
    except ImportError:
        logger.warning("torch is not installed: skipping the self-check.")
        return {"validation": "skipped (torch not installed)"}
    import keras

    reference = torch_reference.build_reference(args.arch, args.num_classes, args.num_frames)
    state_dict = normalize_official_keys(load_torch_state_dict(args.src))
    reference_state = {
        key[len("module."):]: torch.from_numpy(np.asarray(value))
        for key, value in state_dict.items()
    }
    reference.load_state_dict(reference_state, strict=True)
    reference.eval()
    clip = np.random.default_rng(args.seed).integers(
        0, 256, (1, args.num_frames, args.input_size, args.input_size, 3), dtype=np.uint8
    )
    reference_logits = torch_reference.run_reference(reference, clip)
    logits = np.asarray(model(clip.astype(np.float32), training=False))
    with torch.no_grad():
        reference_frames = (
            torch_reference.VideoResNetReference.preprocess(torch.from_numpy(clip))
            .permute(0, 2, 3, 1)
            .numpy()
        )
    frames = keras.ops.convert_to_numpy(
        model.get_layer("preprocessing")(clip.astype(np.float32))
    )
    logits_difference = float(np.max(np.abs(logits - reference_logits)))
    preprocessing_difference = float(np.max(np.abs(frames - reference_frames)))
    logger.info(
        "Self-check on one clip: max |logits - reference| = %.3g, max |preprocessing - "
        "reference| = %.3g.",
        logits_difference,
        preprocessing_difference,
    )
    return {
        "max_abs_logits_difference": logits_difference,
        "max_abs_preprocessing_difference": preprocessing_difference,
    }
