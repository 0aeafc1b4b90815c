"""`selfy export`: write a TF Serving SavedModel from a run or a `.keras` file.

    selfy export runs/ssv1_selfy_r50 --out exported --name selfy
    selfy export model.keras --labels labels.txt --out exported --name selfy --top-k 5

Writes `OUT/<name>/<version>/` (version: the next free number unless
`--version` is given) with the `serving_default` (JPEG frames) and
`predict_frames` (uint8 frames) signatures and warm-up requests, plus
`OUT/models.config` and `OUT/batching.config` examples. Prints a JSON
summary on stdout.
"""

from __future__ import annotations

import argparse
import json

from selfy_tf.cli._help import HelpFormatter


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model as a TF Serving SavedModel",
        description="Export a trained model as a versioned TF Serving SavedModel.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "model_or_run",
        metavar="MODEL_OR_RUN",
        help="training run directory (checkpoints/best.keras, labels.txt) or a .keras file",
    )
    parser.add_argument("--out", required=True, help="export base directory (BASE)")
    parser.add_argument("--name", default="selfy", help="model name: BASE/<name>/<version>")
    parser.add_argument(
        "--version", type=int, default=None, help="version number (default: next free number)"
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="class names, one per line (default: the run's labels.txt, or one beside the "
        ".keras file)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="classes in the top_k_* outputs")
    parser.add_argument(
        "--resize-short",
        type=int,
        default=None,
        help="short side frames are resized to before the centre crop (default: the "
        "evaluation view stored with the model, else input size x 256/224)",
    )
    parser.add_argument(
        "--eval-size",
        default=None,
        help="resize frames to HEIGHTxWIDTH before the centre crop instead, e.g. 240x320 "
        "(default: the evaluation view stored with the model)",
    )
    parser.add_argument(
        "--dtype-policy",
        default=None,
        help="Keras dtype policy to compute with, e.g. mixed_bfloat16 (about 1.6x faster on CPUs "
        "with AVX512-BF16 or AMX); default: the model's own",
    )
    parser.add_argument(
        "--fold-batch-norms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold every batch norm into the convolution before it (same logits, faster on CPU)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from selfy_tf.run_dir import load_model
    from serving.export import export_saved_model
    from tfrecords.video import parse_size

    eval_size = parse_size(args.eval_size) if args.eval_size else None
    if eval_size is not None and args.resize_short is not None:
        raise ValueError(
            f"Pass --resize-short or --eval-size, not both. Received: --resize-short "
            f"{args.resize_short} --eval-size {args.eval_size}."
        )
    loaded = load_model(args.model_or_run, args.labels, require_labels=True)
    model, labels = loaded.model, loaded.labels
    view_settings = dict(loaded.view_settings or {})
    if eval_size is not None or args.resize_short is not None:
        view_settings = {"eval_size": eval_size, "scale_size": args.resize_short}
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
        scale_size=view_settings.get("scale_size"),
        eval_size=view_settings.get("eval_size"),
        fold_batch_norms=args.fold_batch_norms,
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
            }
        )
    )
    return 0
