"""`selfy demo`: SELFY versus TSM and TSN on motion that no single frame shows.

    selfy demo --quick --out demo_out

Builds a synthetic motion dataset, trains small TSN / TSM / SELFY ResNet-18s
with the trainer, evaluates them, exports the SELFY model for serving, sends
one clip through the export, and writes `DIR/report.html` (with figures) and
`DIR/results.json`. Prints a summary table at the end. Run it again to resume
an interrupted demo.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from selfy_cli._help import HelpFormatter

logger = logging.getLogger(__name__)


def register_subparser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train TSN / TSM / SELFY on synthetic motion clips and write a report",
        description=(
            "Trains small TSN, TSM and SELFY ResNet-18s on a synthetic dataset whose "
            "classes differ only by motion, evaluates, exports the SELFY model, runs "
            "one served prediction and writes DIR/report.html and DIR/results.json. "
            "The full demo (3 seeds) takes about 15 minutes on 2 CPU cores."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny data, one epoch, one seed: checks that every step runs (< 3 minutes)",
    )
    parser.add_argument("--out", default="demo_out", help="output folder")
    parser.add_argument(
        "--seeds", type=int, default=None,
        help="number of training seeds (default: 3 for the full demo, 1 with --quick)",
    )
    parser.add_argument(
        "--via-videos", action="store_true",
        help="write the dataset as MP4 files and convert them with the folders "
        "converter instead of writing TFRecords directly",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from selfy_cli.demo import format_summary_table, full_settings, quick_settings, run_demo

    settings = quick_settings() if args.quick else full_settings()
    if args.seeds is not None:
        settings = settings.with_num_seeds(args.seeds)
    if args.via_videos:
        settings = dataclasses.replace(settings, via="videos")
    # Keras prints epoch lines to stdout: keep stdout for the summary.
    with contextlib.redirect_stdout(sys.stderr):
        results = run_demo(args.out, settings)
    print(format_summary_table(results))
    prediction = results["prediction"]
    top = prediction["top_k"][0]
    print(
        f"served prediction: {top['label']} ({100 * top['probability']:.0f} %) "
        f"for a '{prediction['true_label']}' clip"
    )
    print(f"report: {os.path.join(args.out, 'report.html')}")
    return 0
