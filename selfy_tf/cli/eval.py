"""`selfy eval`: top-1/top-5, per-class accuracy and confusion matrix of a trained model.

    selfy eval RUN_DIR --data DATA_DIR --num-clips 2 --num-crops 3

Frames go through the evaluation view stored with the model (the one its
training validated with; see docs/evaluation.md), so a run directory and its
`.keras` file score the same. Writes `eval.json`, `confusion_matrix.json` and
`confusion_matrix.png` into the run directory (or `--out`), and prints the
summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json

from selfy_tf.cli._help import HelpFormatter


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run directory or .keras model on a dataset split",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", metavar="RUN_DIR|MODEL", help="run directory or .keras file")
    parser.add_argument("--data", required=True, metavar="DIR", help="converted dataset directory")
    parser.add_argument("--split", default="validation", help="split to evaluate (default: validation)")
    parser.add_argument("--num-clips", type=int, default=1, help="clips per video, scores averaged (default: 1)")
    parser.add_argument(
        "--num-crops", type=int, choices=(1, 3), default=1, help="crops per clip, scores averaged (default: 1)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch (default: 8)")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="where to write eval.json and the confusion matrix "
        "(default: the run directory or the model's directory)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate

    report = evaluate(
        args.model,
        args.data,
        split=args.split,
        num_clips=args.num_clips,
        num_crops=args.num_crops,
        batch_size=args.batch_size,
        output_dir=args.out if args.out else "auto",
    )
    summary = {key: value for key, value in report.items() if key not in ("per_class", "confusion_matrix")}
    print(json.dumps(summary))
    return 0
