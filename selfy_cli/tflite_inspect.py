"""`selfy tflite-inspect`: size, op list, Flex check and per-op latency of a .tflite model.

    selfy tflite-inspect selfy_r18_int8.tflite --threads 2 --runs 5

Prints a readable report (or one JSON line with `--json`) to stdout. Each
operator is timed alone on the tensors it receives in a real run, since the
Python LiteRT interpreter has no op profiler; the whole-model time is given
beside their sum. Exits with status 1 when the model holds Flex / custom
ops, or, with `--expect-int8`, when a convolution or matrix product does not
take int8 inputs.
"""

from __future__ import annotations

import argparse
import json

from selfy_cli._help import HelpFormatter


def register_subparser(subparsers: argparse._SubParsersAction) -> None:
    from serving import tflite_inspect

    parser = subparsers.add_parser(
        "tflite-inspect",
        help="report size, ops, Flex ops and per-op latency of a .tflite model",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("model", metavar="TFLITE_FILE", help=".tflite file (from `selfy tflite`)")
    parser.add_argument(
        "--threads",
        type=int,
        default=tflite_inspect.DEFAULT_NUM_THREADS,
        help="interpreter threads for the timings",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=tflite_inspect.DEFAULT_NUM_RUNS,
        help="timed runs of the whole model and of each op",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the latency measurements"
    )
    parser.add_argument(
        "--expect-int8",
        action="store_true",
        help="fail unless every conv/matmul op takes int8 inputs",
    )
    parser.add_argument("--top", type=int, default=15, help="slowest ops listed")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from serving import tflite_inspect

    if args.threads < 1 or args.runs < 1:
        raise ValueError(
            "`--threads` and `--runs` must be at least 1. Received: "
            f"--threads={args.threads}, --runs={args.runs}."
        )
    report = tflite_inspect.inspect_model(
        args.model,
        num_threads=args.threads,
        num_runs=args.runs,
        profile=not args.no_profile,
    )
    print(json.dumps(report) if args.json else tflite_inspect.format_report(report, args.top))
    if report["flex_ops"]:
        raise ValueError(
            f"{args.model} holds non-builtin (Flex / custom) ops {report['flex_ops']}, "
            "which the LiteRT pip wheels cannot run."
        )
    if args.expect_int8 and report["non_int8_compute_ops"]:
        raise ValueError(
            f"{args.model}: {len(report['non_int8_compute_ops'])} conv/matmul ops do not "
            f"take int8 inputs: {report['non_int8_compute_ops'][:10]}."
        )
    return 0
