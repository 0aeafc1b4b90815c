"""`selfy export`: write a TF Serving SavedModel from a run or a `.keras` file.

    selfy export runs/ssv1_selfy_r50 --out exported --name selfy
    selfy export model.keras --labels labels.txt --out exported --name selfy --top-k 5

MODEL is a training run directory or a `.keras` file. Frames are resized by
the evaluation view stored with the model unless `--eval-size` or
`--scale-size` overrides it.

Writes `BASE/<name>/<version>/` (version: the next free number unless
`--version` is given) with the `serving_default` (JPEG frames) and
`predict_frames` (uint8 frames) signatures and warm-up requests (with
`--stream`, for a causal model, also `predict_stream`: one frame and the
stream's states in, its logits and new states out), plus
`BASE/models.config` and `BASE/batching.config` examples. Prints a JSON
summary on stdout.
"""

from __future__ import annotations

import argparse
import json

from selfy_cli._help import HelpFormatter
from selfy_cli._options import add_labels_argument, add_model_argument, add_view_arguments, view_override


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model as a TF Serving SavedModel",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_model_argument(parser, keras_only=True)
    parser.add_argument("--out", required=True, metavar="BASE", help="export base directory")
    parser.add_argument("--name", default="selfy", help="model name: BASE/<name>/<version>")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next free number)"
    )
    add_labels_argument(parser)
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes in the top_k_* outputs")
    # `--resize-short`: the earlier name of `--scale-size` (`selfy_tf.compat`).
    add_view_arguments(parser, scale_alias="--resize-short")
    parser.add_argument(
        "--dtype-policy",
        default=None,
        help="Keras dtype policy to compute with, e.g. mixed_bfloat16 (faster on CPUs "
        "with AVX512-BF16 or AMX); default: the model's own",
    )
    parser.add_argument(
        "--fold-batch-norms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold every batch norm into the convolution before it (same logits, faster on CPU)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="also add the predict_stream signature (frame + states in, logits + states out) "
        "of a causal model (docs/streaming.md)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfy_tf.run_dir import load_model
    from serving.export import export_saved_model

    loaded = load_model(
        args.model,
        args.labels,
        require_labels=True,
        keras_needed_for="selfy export builds the SavedModel from the Keras model",
    )
    model, labels = loaded.model, loaded.labels
    view_settings = view_override(args) or loaded.view_settings
    if args.dtype_policy is not None:
        from selfy_tf.models import with_dtype_policy

        model = with_dtype_policy(model, args.dtype_policy)
    result = export_saved_model(
        model,
        args.out,
        name=args.name,
        labels=labels,
        version=args.version,
        top_k=args.top_k,
        view_settings=view_settings,
        fold_batch_norms=args.fold_batch_norms,
        stream=args.stream,
    )
    config = result.signature_config
    print(
        json.dumps(
            {
                "path": result.path,
                "version": result.version,
                "num_frames": config.num_frames,
                "input_size": config.input_size,
                "top_k": config.top_k,
                "eval_view": config.view.resize_settings(),
                "num_classes": len(labels),
                "dtype_policy": args.dtype_policy,
                "fold_batch_norms": args.fold_batch_norms,
                "stream": args.stream,
            }
        )
    )
    return 0
