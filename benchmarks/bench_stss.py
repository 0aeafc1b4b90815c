"""Speed of the STSS op (each backend) and of the whole SELFY block on CPU.

Runs with 2 intra-op and 2 inter-op threads. Cases:

- `stss_<backend>_<mode>`: the op at the reference shape (batch 2, 8 frames,
  14 x 14 x 128, window 5 x 9 x 9), forward (`fwd_ms`) and forward + backward
  (`fwdbwd_ms`). Modes: `graph` (`tf.function`, op with `jit=False`: plain
  TensorFlow kernels, the export/TFLite configuration), `graph_jit`
  (`tf.function`, op with its default `jit=True`: XLA-compiled gathers; matmul
  only) and `xla` (the whole `tf.function` compiled with `jit_compile=True`).
- `selfy_block_<mode>`: `SELFYBlock` on `[16, 28, 28, 512]` (8 frames) with
  `training=True`, forward and forward + backward; modes `graph` (its op runs
  with `jit=True`), `graph_nojit` and `xla`.

Each figure is the minimum (and median) over repeats of the mean time of a
fixed number of calls, after untimed warm-up calls (tracing, XLA compilation).
Ratios compare each STSS backend and mode with `stss_matmul_graph_jit`, the
default configuration, measured in the same run.

Example:

    python benchmarks/bench_stss.py --results-file /tmp/stss.json
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from typing import Callable

import numpy as np
import tensorflow as tf

from _common import limit_threads, write_results

logger = logging.getLogger("bench_stss")

STSS_SHAPE = (2, 8, 14, 14, 128)
WINDOW = (5, 9, 9)
BLOCK_SHAPE = (16, 28, 28, 512)
BLOCK_FRAMES = 8
DEFAULT_CASE = "stss_matmul_graph_jit"


def _time_calls(
    function: Callable[[], object], num_warmup: int, repeats: int, budget_s: float
) -> tuple[float, float]:
    """Returns (min, median) milliseconds per call over `repeats` repeats."""
    for _ in range(num_warmup):
        function()
    start = time.perf_counter()
    function()
    single = time.perf_counter() - start
    calls = int(max(1, min(20, budget_s / max(single, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            result = function()
        _ = [np.asarray(value) for value in tf.nest.flatten(result)][:1]
        times.append((time.perf_counter() - start) / calls * 1e3)
    return float(np.min(times)), float(np.median(times))


def _stss_case(backend: str, mode: str) -> tuple[Callable, Callable]:
    from selfy_tf.ops import stss

    features = tf.random.stateless_normal(STSS_SHAPE, seed=(1, 2))
    jit = mode == "graph_jit"

    def forward(values):
        return stss(values, WINDOW, backend=backend, jit=jit)

    def forward_backward(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            output = stss(values, WINDOW, backend=backend, jit=jit)
            loss = tf.reduce_sum(output * output)
        return loss, tape.gradient(loss, values)

    compile_whole = mode == "xla"
    forward = tf.function(forward, jit_compile=compile_whole)
    forward_backward = tf.function(forward_backward, jit_compile=compile_whole)
    return (lambda: forward(features)), (lambda: forward_backward(features))


def _block_case(mode: str) -> tuple[Callable, Callable]:
    from selfy_tf.layers import SELFYBlock  # written alongside; may be missing

    block = SELFYBlock(num_frames=BLOCK_FRAMES, stss_jit=(mode == "graph"))
    features = tf.random.stateless_normal(BLOCK_SHAPE, seed=(3, 4))
    block.build(BLOCK_SHAPE)

    def forward(values):
        return block(values, training=True)

    def forward_backward(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            output = block(values, training=True)
            loss = tf.reduce_sum(output * output)
        return loss, tape.gradient(loss, [values, *block.trainable_variables])

    compile_whole = mode == "xla"
    forward = tf.function(forward, jit_compile=compile_whole)
    forward_backward = tf.function(forward_backward, jit_compile=compile_whole)
    return (lambda: forward(features)), (lambda: forward_backward(features))


def _run_case(
    name: str, make: Callable, args: argparse.Namespace, results: dict
) -> None:
    logger.info("case %s", name)
    try:
        forward, forward_backward = make()
        for phase, function in (("fwd", forward), ("fwdbwd", forward_backward)):
            best, median = _time_calls(
                function, args.num_warmup, args.repeats, args.budget_s
            )
            results[f"{name}_{phase}_ms"] = round(best, 3)
            results[f"{name}_{phase}_median_ms"] = round(median, 3)
            logger.info("  %s: min %.2f ms, median %.2f ms", phase, best, median)
    except Exception as error:  # noqa: BLE001 - record and go on with the sweep
        logger.exception("case %s failed", name)
        results[f"{name}_error"] = f"{type(error).__name__}: {error}"[:500]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--num-warmup", type=int, default=3, help="untimed calls per case (default 3)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed repeats per case (default 7)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.25,
        help="seconds per repeat; sets the calls per repeat (default 0.25)",
    )
    parser.add_argument(
        "--backends",
        default="matmul,shift,patches",
        help="comma-separated STSS backends (default matmul,shift,patches)",
    )
    parser.add_argument(
        "--skip-block", action="store_true", help="skip the SELFYBlock cases"
    )
    parser.add_argument(
        "--results-file", default=None, help="also write the JSON result here"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    limit_threads(2)

    results: dict = {
        "benchmark": "stss",
        "tf_version": tf.__version__,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "intra_op_threads": 2,
        "inter_op_threads": 2,
        "stss_shape": list(STSS_SHAPE),
        "window": list(WINDOW),
        "block_shape": list(BLOCK_SHAPE),
        "block_frames": BLOCK_FRAMES,
        "repeats": args.repeats,
        "load_average_start": os.getloadavg()[0],
    }
    stss_module = sys.modules.get("selfy_tf.ops.stss")
    if stss_module is None:
        import importlib

        stss_module = importlib.import_module("selfy_tf.ops.stss")
    results["matmul_tile"] = list(
        stss_module._choose_tiles(STSS_SHAPE[2], STSS_SHAPE[3], WINDOW[1], WINDOW[2])
    )

    backends = [name for name in args.backends.split(",") if name]
    for backend in backends:
        modes = ("graph", "xla")
        if backend == "matmul":
            modes = ("graph_jit", *modes)
        for mode in modes:
            _run_case(
                f"stss_{backend}_{mode}",
                lambda backend=backend, mode=mode: _stss_case(backend, mode),
                args,
                results,
            )
    if not args.skip_block:
        for mode in ("graph", "graph_nojit", "xla"):
            _run_case(
                f"selfy_block_{mode}",
                lambda mode=mode: _block_case(mode),
                args,
                results,
            )

    for phase in ("fwd", "fwdbwd"):
        baseline = results.get(f"{DEFAULT_CASE}_{phase}_ms")
        if not baseline:
            continue
        for key in list(results):
            if key.startswith("stss_") and key.endswith(f"_{phase}_ms"):
                if "_median_" in key:
                    continue
                case = key[: -len(f"_{phase}_ms")]
                results[f"{case}_{phase}_ratio"] = round(results[key] / baseline, 3)
    results["load_average_end"] = os.getloadavg()[0]

    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
