"""`selfy eval`: top-1/top-5, per-class accuracy and confusion matrix of a trained model.

    selfy eval runs/mine --data data/mine --num-clips 2 --num-crops 3
    selfy eval model.keras --data data/mine --eval-size 240x320
    selfy eval exported/mine --data data/mine
    selfy eval mine.tflite --data data/mine

MODEL is a run directory, a `.keras` file, an exported SavedModel (run
through its `predict_frames` signature, as TF Serving runs it) or a
`.tflite` file (run with LiteRT). Frames go through the evaluation view
stored with the model (the one its training validated with, which `selfy
export` and `selfy tflite` record; see docs/evaluation.md), so a run and
its exports score the same clips; `--eval-size` or `--scale-size` overrides
its resize. Writes `eval.json`, `confusion_matrix.json` and
`confusion_matrix.png` into the run directory, else the folder holding the
model (or `--out`), and prints the summary as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json

from selfy_cli._help import HelpFormatter
from selfy_cli._options import add_model_argument, add_view_arguments, view_override
from selfy_tf.eval_view import NUM_CROPS_CHOICES


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model on a dataset split",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    add_model_argument(parser, litert=True)
    parser.add_argument("--data", required=True, metavar="DIR", help="converted dataset directory")
    parser.add_argument("--split", default="validation", help="split to evaluate")
    parser.add_argument("--num-clips", type=int, default=1, metavar="N", help="clips per video, scores averaged")
    parser.add_argument(
        "--num-crops", type=int, choices=NUM_CROPS_CHOICES, default=1, help="crops per clip, scores averaged"
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="videos per batch")
    add_view_arguments(parser)
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="where to write eval.json and the confusion matrix "
        "(default: the run directory, else the folder holding the model)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainer.evaluate import evaluate, report_dir

    report = evaluate(
        args.model,
        args.data,
        split=args.split,
        num_clips=args.num_clips,
        num_crops=args.num_crops,
        batch_size=args.batch_size,
        # No override: the view stored with the model.
        view_settings=view_override(args),
        output_dir=args.out or report_dir(args.model),
    )
    summary = {key: value for key, value in report.items() if key not in ("per_class", "confusion_matrix")}
    print(json.dumps(summary))
    return 0
