"""Speed of the STSS op (each backend) and of the whole SELFY block on CPU.

Runs with 2 intra-op and 2 inter-op threads. Cases:

- `stss_<backend>_<mode>`: the op at the reference shape (batch 2, 8 frames,
  14 x 14 x 128, window 5 x 9 x 9), forward (`fwd_ms`) and forward + backward
  (`fwdbwd_ms`). Modes: `graph` (`tf.function`, op with `jit=False`: plain
  TensorFlow kernels, the export/TFLite configuration), `graph_jit`
  (`tf.function`, op with `jit=True`, the training configuration:
  XLA-compiled gathers; matmul only) and `xla` (the whole `tf.function` compiled with `jit_compile=True`).
- `selfy_block_<mode>`: `SELFYBlock` on `[16, 28, 28, 512]` (8 frames) with
  `training=True`, forward and forward + backward; modes `graph` (its op runs
  with XLA-compiled gathers, `selfy_tf.ops.stss_xla(True)`), `graph_nojit`
  and `xla`.
- `batch_norm_exact`: the package's training-mode batch norm (exact
  statistics) on the first STSS extraction activation, `[15680, 9, 9, 4]`
  (1.27 M elements per channel); on TensorFlow also `batch_norm_fused_kernel`,
  TensorFlow's fused kernel on the same tensor (the implementation before the
  statistics were made exact), and the ratio `batch_norm_exact_cost_ratio`.

Under `KERAS_BACKEND=jax` the same cases run as `jax.jit`-compiled functions
(mode `jit`; "patches" is TensorFlow-only and skipped).

Each figure is the minimum (and median) over repeats of the mean time of a
fixed number of calls, after untimed warm-up calls (tracing, XLA compilation).
Ratios compare each STSS backend and mode with `stss_matmul_graph_jit`, the
training configuration, measured in the same run.

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

import keras
import numpy as np
from _common import limit_threads, write_results

ON_TENSORFLOW = keras.config.backend() == "tensorflow"
if ON_TENSORFLOW:
    import tensorflow as tf
else:
    import jax

logger = logging.getLogger("bench_stss")

STSS_SHAPE = (2, 8, 14, 14, 128)
WINDOW = (5, 9, 9)
BLOCK_SHAPE = (16, 28, 28, 512)
BLOCK_FRAMES = 8
BATCH_NORM_SHAPE = (15680, 9, 9, 4)
DEFAULT_CASE = "stss_matmul_graph_jit" if ON_TENSORFLOW else "stss_matmul_jit"


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
        _ = [np.asarray(value) for value in keras.tree.flatten(result)][:1]
        times.append((time.perf_counter() - start) / calls * 1e3)
    return float(np.min(times)), float(np.median(times))


def _jax_case(function: Callable, values, variables=()) -> tuple[Callable, Callable]:
    """`jax.jit` forward and forward + backward of `sum(function(values)**2)`."""
    variables = list(variables)

    def run(tensor, state):
        with keras.StatelessScope(state_mapping=list(zip(variables, state))):
            return function(tensor)

    def loss(tensor, state):
        output = run(tensor, state)
        return keras.ops.sum(output * output)

    forward = jax.jit(run)
    forward_backward = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    state = [variable.value for variable in variables]
    return (lambda: forward(values, state)), (lambda: forward_backward(values, state))


def _stss_case(backend: str, mode: str) -> tuple[Callable, Callable]:
    from selfy_tf.ops import stss

    if not ON_TENSORFLOW:
        features = np.random.default_rng(1).normal(size=STSS_SHAPE).astype("float32")
        return _jax_case(lambda values: stss(values, WINDOW, backend=backend), features)

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
    from selfy_tf.ops import stss_xla

    block = SELFYBlock(num_frames=BLOCK_FRAMES)
    # Read when the functions below are traced (their first call).
    xla_gathers = mode == "graph"
    block.build(BLOCK_SHAPE)
    if not ON_TENSORFLOW:
        features = np.random.default_rng(3).normal(size=BLOCK_SHAPE).astype("float32")
        return _jax_case(
            lambda values: block(values, training=True),
            features,
            block.trainable_variables + block.non_trainable_variables,
        )
    features = tf.random.stateless_normal(BLOCK_SHAPE, seed=(3, 4))

    def forward(values):
        with stss_xla(xla_gathers):
            return block(values, training=True)

    def forward_backward(values):
        with stss_xla(xla_gathers), tf.GradientTape() as tape:
            tape.watch(values)
            output = block(values, training=True)
            loss = tf.reduce_sum(output * output)
        return loss, tape.gradient(loss, [values, *block.trainable_variables])

    compile_whole = mode == "xla"
    forward = tf.function(forward, jit_compile=compile_whole)
    forward_backward = tf.function(forward_backward, jit_compile=compile_whole)
    return (lambda: forward(features)), (lambda: forward_backward(features))


def _batch_norm_case(kernel: str) -> tuple[Callable, Callable]:
    from selfy_tf.layers._batch_norm import FusedBatchNormalization

    values = np.random.default_rng(5).normal(2.0, 1.0, BATCH_NORM_SHAPE).astype("float32")
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build(BATCH_NORM_SHAPE)
    if not ON_TENSORFLOW:
        return _jax_case(
            lambda tensor: layer(tensor, training=True), values, layer.weights
        )
    values = tf.constant(values)

    def normalize(tensor):
        if kernel == "exact":
            return layer(tensor, training=True)
        return tf.compat.v1.nn.fused_batch_norm(
            tensor, layer.gamma.value, layer.beta.value, epsilon=1e-5, is_training=True
        )[0]

    def forward_backward(tensor):
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            output = normalize(tensor)
            loss = tf.reduce_sum(output * output)
        return loss, tape.gradient(loss, [tensor, layer.gamma.value, layer.beta.value])

    forward = tf.function(normalize)
    forward_backward = tf.function(forward_backward)
    return (lambda: forward(values)), (lambda: forward_backward(values))


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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def _environment(args: argparse.Namespace) -> dict:
    """What the figures depend on: backend and versions, the shapes, the tiles and the load."""
    from selfy_tf.ops._stss_plan import choose_tiles

    return {
        "benchmark": "stss",
        "keras_backend": keras.config.backend(),
        "tf_version": tf.__version__ if ON_TENSORFLOW else None,
        "jax_version": None if ON_TENSORFLOW else jax.__version__,
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
        "matmul_tile": list(choose_tiles(STSS_SHAPE[2], STSS_SHAPE[3], WINDOW[1], WINDOW[2])),
    }


def _run_cases(args: argparse.Namespace, results: dict) -> None:
    """The STSS backends in each mode, the batch norm kernels and the SELFY block."""
    backends = [name for name in args.backends.split(",") if name]
    for backend in backends:
        modes = ("graph", "xla")
        if backend == "matmul":
            modes = ("graph_jit", *modes)
        if not ON_TENSORFLOW:
            if backend == "patches":
                continue
            modes = ("jit",)
        for mode in modes:
            _run_case(
                f"stss_{backend}_{mode}",
                lambda backend=backend, mode=mode: _stss_case(backend, mode),
                args,
                results,
            )
    for kernel in ("exact", "fused_kernel") if ON_TENSORFLOW else ("exact",):
        _run_case(
            f"batch_norm_{kernel}",
            lambda kernel=kernel: _batch_norm_case(kernel),
            args,
            results,
        )
    if not args.skip_block:
        for mode in ("graph", "graph_nojit", "xla") if ON_TENSORFLOW else ("jit",):
            _run_case(
                f"selfy_block_{mode}",
                lambda mode=mode: _block_case(mode),
                args,
                results,
            )


def _record_ratios(results: dict) -> None:
    """Each STSS case against the default one, and the exact batch norm against the fused kernel."""
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
    for phase in ("fwd", "fwdbwd"):
        exact = results.get(f"batch_norm_exact_{phase}_ms")
        fused = results.get(f"batch_norm_fused_kernel_{phase}_ms")
        if exact and fused:
            results[f"batch_norm_exact_cost_{phase}_ratio"] = round(exact / fused, 3)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    if ON_TENSORFLOW:
        limit_threads(2)
    results = _environment(args)
    _run_cases(args, results)
    _record_ratios(results)
    results["load_average_end"] = os.getloadavg()[0]
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
