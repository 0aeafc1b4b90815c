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

`--torch` adds the PyTorch reference with the official release's layers
(`selfy_tf.weights.torch_reference`, float32, eager, 2 threads), timed before
and after all the cases above and averaged (`..._before_ms` / `..._after_ms`
keep both):

- `torch_stss_all_pairs`: the STSS the official release's plain-PyTorch way
  (`stss_all_pairs`: one all-pairs matrix product per frame pair, then the
  window read out), the baseline of the ratios. Its compiled correlation
  sampler, the other official path, runs ~1 s forward on a 2-core CPU
  (benchmarks/README.md): far slower, so no baseline.
- `torch_stss_definition`: `stss_reference`, the by-definition loop over the
  405 window offsets, for scale.
- `torch_selfy_block`: `SELFYBlockReference` (all-pairs STSS) in training
  mode at the block shape, forward and forward + backward (gradients of the
  input and every parameter, as ours).

and `stss_over_torch_<fwd|fwdbwd>_ratio` (`stss_matmul_graph_jit` /
`torch_stss_all_pairs`; `stss_definition_over_torch_..._ratio` against
`torch_stss_definition`) and `selfy_block_over_torch_<fwd|fwdbwd>_ratio`
(`selfy_block_graph` / `torch_selfy_block`; `_jit` cases on JAX): ours /
official, lower is faster.

Useful work: `stss_useful_gflop_fwd` is the STSS's multiply-adds counted
by the definition (2·B·T·H·W·L·U·V·C FLOP, 0.325 GFLOP at the reference
shape), `stss_useful_gflop_fwdbwd` three times that (the backward pass
multiplies the upstream gradient into both factors of every product). On
TensorFlow the run measures the float32 `tf.matmul` peak
(`matmul_float32_gflops`, 4096²) and reports, for our default STSS case and
the PyTorch ones, the useful GFLOP/s (`..._useful_gflops`) and its fraction
of that peak (`..._peak_fraction`).

`--quick` runs tiny shapes (a path check, not figures): the default STSS
and block cases only (`stss_matmul_graph_jit`, `selfy_block_graph`), no batch
norm cases, 2 repeats, a 1024² matmul.

Each figure is the minimum (and median) over repeats of the mean time of a
fixed number of calls, after untimed warm-up calls (tracing, XLA compilation).
Ratios compare each STSS backend and mode with `stss_matmul_graph_jit`, the
training configuration, measured in the same run.

Example:

    python benchmarks/bench_stss.py --results-file /tmp/stss.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
from typing import Callable

# Before Keras: importing _common sets TensorFlow's environment (the BFC
# allocator), which TensorFlow reads only when it is first imported.
from _common import limit_threads, matmul_gflops, write_results  # isort: skip

import keras
import numpy as np

ON_TENSORFLOW = keras.config.backend() == "tensorflow"
if ON_TENSORFLOW:
    import tensorflow as tf
else:
    import jax

logger = logging.getLogger("bench_stss")

THREADS = 2
DEFAULT_CASE = "stss_matmul_graph_jit" if ON_TENSORFLOW else "stss_matmul_jit"
DEFAULT_BLOCK_CASE = "selfy_block_graph" if ON_TENSORFLOW else "selfy_block_jit"
TORCH_BASELINE = "torch_stss_all_pairs"


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The shapes of a run: the reference ones, or tiny ones for `--quick`."""

    stss: tuple[int, int, int, int, int] = (2, 8, 14, 14, 128)
    # The SELFY block's extraction needs the 5 x 9 x 9 window.
    window: tuple[int, int, int] = (5, 9, 9)
    block: tuple[int, int, int, int] = (16, 28, 28, 512)
    block_frames: int = 8
    batch_norm: tuple[int, int, int, int] = (15680, 9, 9, 4)
    matmul_size: int = 4096


REFERENCE = Shapes()
QUICK = Shapes(stss=(1, 4, 6, 6, 16), block=(4, 12, 12, 32), block_frames=4, batch_norm=(64, 9, 9, 4),
               matmul_size=1024)


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


def _stss_case(backend: str, mode: str, shapes: Shapes) -> tuple[Callable, Callable]:
    from selfy_tf.ops import stss

    window = shapes.window
    if not ON_TENSORFLOW:
        features = np.random.default_rng(1).normal(size=shapes.stss).astype("float32")
        return _jax_case(lambda values: stss(values, window, backend=backend), features)

    features = tf.random.stateless_normal(shapes.stss, seed=(1, 2))
    jit = mode == "graph_jit"

    def forward(values):
        return stss(values, window, backend=backend, jit=jit)

    def forward_backward(values):
        with tf.GradientTape() as tape:
            tape.watch(values)
            output = stss(values, window, backend=backend, jit=jit)
            loss = tf.reduce_sum(output * output)
        return loss, tape.gradient(loss, values)

    compile_whole = mode == "xla"
    forward = tf.function(forward, jit_compile=compile_whole)
    forward_backward = tf.function(forward_backward, jit_compile=compile_whole)
    return (lambda: forward(features)), (lambda: forward_backward(features))


def _block_case(mode: str, shapes: Shapes) -> tuple[Callable, Callable]:
    from selfy_tf.layers import SELFYBlock  # written alongside; may be missing
    from selfy_tf.ops import stss_xla

    block = SELFYBlock(num_frames=shapes.block_frames)
    # Read when the functions below are traced (their first call).
    xla_gathers = mode == "graph"
    block.build(shapes.block)
    if not ON_TENSORFLOW:
        features = np.random.default_rng(3).normal(size=shapes.block).astype("float32")
        return _jax_case(
            lambda values: block(values, training=True),
            features,
            block.trainable_variables + block.non_trainable_variables,
        )
    features = tf.random.stateless_normal(shapes.block, seed=(3, 4))

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


def _batch_norm_case(kernel: str, shapes: Shapes) -> tuple[Callable, Callable]:
    from selfy_tf.layers._batch_norm import FusedBatchNormalization

    values = np.random.default_rng(5).normal(2.0, 1.0, shapes.batch_norm).astype("float32")
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build(shapes.batch_norm)
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


def _torch_stss_case(method: str, shapes: Shapes) -> tuple[Callable, Callable]:
    """A PyTorch STSS of `torch_reference.STSS_METHODS` on `[B, T, C, H, W]` features."""
    import torch

    from selfy_tf.weights.torch_reference import STSS_METHODS

    stss = STSS_METHODS[method]
    batch, frames, height, width, channels = shapes.stss
    features = torch.from_numpy(
        np.random.default_rng(1).normal(size=(batch, frames, channels, height, width)).astype("float32")
    )

    def forward():
        with torch.no_grad():
            return stss(features, shapes.window)

    def forward_backward():
        values = features.detach().requires_grad_(True)
        loss = stss(values, shapes.window).square().sum()
        loss.backward()
        return loss.detach(), values.grad

    return forward, forward_backward


def _torch_block_case(shapes: Shapes) -> tuple[Callable, Callable]:
    """`SELFYBlockReference` (official layers, all-pairs STSS) in training mode, NCHW."""
    import torch

    from selfy_tf.weights.torch_reference import SELFYBlockReference

    batch_frames, height, width, channels = shapes.block
    block = SELFYBlockReference(channels, shapes.block_frames, window=shapes.window, stss_method="all_pairs")
    block.train()
    features = torch.from_numpy(
        np.random.default_rng(3).normal(size=(batch_frames, channels, height, width)).astype("float32")
    )

    def forward():
        with torch.no_grad():
            return block(features)

    def forward_backward():
        block.zero_grad(set_to_none=True)
        values = features.detach().requires_grad_(True)
        loss = block(values).square().sum()
        loss.backward()
        return loss.detach(), values.grad

    return forward, forward_backward


def _run_case(
    name: str, make: Callable, args: argparse.Namespace, results: dict
) -> None:
    """Times the forward and forward + backward functions that `make()` returns."""
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
        "--repeats", type=int, default=None, help="timed repeats per case (default 7; 2 with --quick)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.25,
        help="seconds per repeat; sets the calls per repeat (default 0.25)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated STSS backends (default matmul,shift,patches; matmul with --quick)",
    )
    parser.add_argument(
        "--skip-block", action="store_true", help="skip the SELFYBlock cases"
    )
    parser.add_argument(
        "--torch",
        action="store_true",
        help="also time the PyTorch reference (official layers: STSS and SELFY block), "
        "before and after our cases, and report ours / official ratios (needs torch)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny shapes, the default STSS and block cases only, 2 repeats: a path check, not figures",
    )
    parser.add_argument(
        "--results-file", default=None, help="also write the JSON result here"
    )
    args = parser.parse_args(argv)
    if args.backends is None:
        args.backends = "matmul" if args.quick else "matmul,shift,patches"
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    return args


def _environment(args: argparse.Namespace, shapes: Shapes) -> dict:
    """What the figures depend on: backend and versions, the shapes, the tiles and the load."""
    from selfy_tf.ops._stss_plan import choose_tiles

    stss_shape, window = shapes.stss, shapes.window
    return {
        "benchmark": "stss",
        "keras_backend": keras.config.backend(),
        "tf_version": tf.__version__ if ON_TENSORFLOW else None,
        "jax_version": None if ON_TENSORFLOW else jax.__version__,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "intra_op_threads": THREADS,
        "inter_op_threads": THREADS,
        "quick": args.quick,
        "stss_shape": list(stss_shape),
        "window": list(window),
        "block_shape": list(shapes.block),
        "block_frames": shapes.block_frames,
        "repeats": args.repeats,
        "load_average_start": os.getloadavg()[0],
        "matmul_tile": list(choose_tiles(stss_shape[2], stss_shape[3], window[1], window[2])),
        "stss_useful_gflop_fwd": round(_stss_useful_gflop(shapes), 4),
        "stss_useful_gflop_fwdbwd": round(3 * _stss_useful_gflop(shapes), 4),
    }


def _stss_useful_gflop(shapes: Shapes) -> float:
    """The STSS's forward multiply-adds by the definition, in GFLOP (2 FLOP each)."""
    batch, frames, height, width, channels = shapes.stss
    length, rows, cols = shapes.window
    return 2.0 * batch * frames * height * width * length * rows * cols * channels / 1e9


def _run_cases(args: argparse.Namespace, shapes: Shapes, results: dict) -> None:
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
        if args.quick:
            modes = modes[:1]
        for mode in modes:
            _run_case(
                f"stss_{backend}_{mode}",
                lambda backend=backend, mode=mode: _stss_case(backend, mode, shapes),
                args,
                results,
            )
    for kernel in () if args.quick else ("exact", "fused_kernel") if ON_TENSORFLOW else ("exact",):
        _run_case(
            f"batch_norm_{kernel}",
            lambda kernel=kernel: _batch_norm_case(kernel, shapes),
            args,
            results,
        )
    if not args.skip_block:
        block_modes = ("graph", "graph_nojit", "xla") if ON_TENSORFLOW else ("jit",)
        for mode in block_modes[:1] if args.quick else block_modes:
            _run_case(
                f"selfy_block_{mode}",
                lambda mode=mode: _block_case(mode, shapes),
                args,
                results,
            )


def _run_torch_cases(args: argparse.Namespace, shapes: Shapes, results: dict) -> None:
    """The PyTorch reference's cases, into `results` (called before and after ours)."""
    import torch

    torch.set_num_threads(THREADS)
    results["torch_version"] = torch.__version__
    for method in ("all_pairs", "definition"):
        _run_case(f"torch_stss_{method}", lambda method=method: _torch_stss_case(method, shapes), args, results)
    if not args.skip_block:
        _run_case("torch_selfy_block", lambda: _torch_block_case(shapes), args, results)


def _average_torch_runs(before: dict, after: dict, results: dict) -> None:
    """The mean of the runs before and after ours (both kept), or the error of either."""
    for key, value in before.items():
        if not key.endswith("_ms"):
            results[key] = value
            continue
        stem = key[: -len("_ms")]
        results[f"{stem}_before_ms"] = value
        if key in after:
            results[f"{stem}_after_ms"] = after[key]
            results[key] = round((value + after[key]) / 2, 3)
    for key, value in after.items():
        if key.endswith("_error"):
            results.setdefault(key, value)


def _record_torch_ratios(results: dict) -> None:
    """Ours / official for the STSS and the block (`..._over_torch_<phase>_ratio`)."""
    pairs = {
        "stss": (DEFAULT_CASE, TORCH_BASELINE),
        "stss_definition": (DEFAULT_CASE, "torch_stss_definition"),
        "selfy_block": (DEFAULT_BLOCK_CASE, "torch_selfy_block"),
    }
    for name, (ours, official) in pairs.items():
        for phase in ("fwd", "fwdbwd"):
            numerator = results.get(f"{ours}_{phase}_ms")
            denominator = results.get(f"{official}_{phase}_ms")
            if numerator and denominator:
                results[f"{name}_over_torch_{phase}_ratio"] = round(numerator / denominator, 4)


def _record_useful_work(results: dict) -> None:
    """GFLOP/s of useful STSS work and the fraction of the matmul peak, for ours and PyTorch's."""
    peak = results.get("matmul_float32_gflops")
    for case in (DEFAULT_CASE, "torch_stss_all_pairs", "torch_stss_definition"):
        for phase in ("fwd", "fwdbwd"):
            milliseconds = results.get(f"{case}_{phase}_ms")
            if not milliseconds:
                continue
            gflops = results[f"stss_useful_gflop_{phase}"] / (milliseconds / 1e3)
            results[f"{case}_{phase}_useful_gflops"] = round(gflops, 2)
            if peak:
                results[f"{case}_{phase}_peak_fraction"] = round(gflops / peak, 4)
                logger.info("%s %s: %.1f useful GFLOP/s, %.1f %% of the %.0f GFLOP/s matmul peak",
                            case, phase, gflops, 100 * gflops / peak, peak)


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
        limit_threads(THREADS)
    shapes = QUICK if args.quick else REFERENCE
    results = _environment(args, shapes)
    torch_before: dict = {}
    if args.torch:
        _run_torch_cases(args, shapes, torch_before)
    _run_cases(args, shapes, results)
    if args.torch:
        torch_after: dict = {}
        _run_torch_cases(args, shapes, torch_after)
        _average_torch_runs(torch_before, torch_after, results)
        _record_torch_ratios(results)
    if ON_TENSORFLOW:
        try:
            results["matmul_float32_gflops"] = round(matmul_gflops("float32", shapes.matmul_size), 1)
        except Exception as error:  # noqa: BLE001 - recorded, the figures above stand
            results["matmul_error"] = f"{type(error).__name__}: {error}"[:300]
    _record_useful_work(results)
    _record_ratios(results)
    results["load_average_end"] = os.getloadavg()[0]
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
