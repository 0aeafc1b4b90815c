"""SELFY on an accelerator through Keras 3's JAX backend, side by side with PyTorch.

Runs anywhere: on a GPU it runs the full configuration, on a CPU a tiny smoke
configuration (seconds) with the same code path. TensorFlow is never imported
(the GPU machines this is meant for have none). Cases, each timed for JAX
(`jax.jit`, bfloat16 mixed precision where a model is involved) and for the
plain-PyTorch reference of the same architecture
(`selfy_tf.weights.torch_reference`; bfloat16 autocast, channels_last,
`torch.compile` where asked), in the same process:

- `correctness`: `selfy_tsm_r50` with fixed weights (drawn from NumPy seeds, so
  the same on every machine and backend); float32 logits with full-precision
  matrix products against the logits of the same weights computed beforehand
  on a CPU (`--reference`, written by `--make-reference`), and bfloat16 vs
  float32 top-1 agreement on random clips.
- `stss_fwd`, `stss_fwdbwd`: the STSS op (8 clips x 8 frames, 14 x 14 x 128,
  window 5 x 9 x 9); PyTorch runs the official release's pure-PyTorch path
  (`torch_reference.stss_all_pairs`: one all-pairs einsum per frame pair,
  then the window read out of it), as do its block and model.
- `block_fwdbwd`: the SELFY block, `[64, 28, 28, 512]` (8 clips x 8 frames).
- `train_step`: one SGD step of `selfy_tsm_r50` on 8 clips x 8 x 224 x 224
  (Nesterov momentum 0.9, weight decay 5e-4, clip by global norm 20), clips/s
  and peak accelerator memory per clip.
- `infer_b1`, `infer_b32`: inference clips/s at batch 1 and 32.

Every ratio is JAX time / PyTorch time measured in the same run (below 1:
JAX is faster). One JSON line goes to stdout (`--results-file` also writes it).

Examples:

    python benchmarks/bench_gpu.py                         # GPU: full; CPU: smoke
    python benchmarks/bench_gpu.py --smoke --results-file /tmp/gpu.json
    python benchmarks/bench_gpu.py --make-reference        # on a CPU, beforehand
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import platform
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from _common import write_results

logger = logging.getLogger("bench_gpu")

REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "bench_gpu_reference.npz"


@dataclasses.dataclass(frozen=True)
class Setup:
    """Shapes of one configuration (full on a GPU, smoke on a CPU)."""

    model: str
    num_classes: int
    num_frames: int
    input_size: int
    model_kwargs: dict
    stss_shape: tuple[int, int, int, int, int]
    window: tuple[int, int, int]
    block_shape: tuple[int, int, int, int]
    block_kwargs: dict
    train_batch: int
    infer_batches: tuple[int, ...]
    reference_clips: int
    agreement_clips: int


FULL = Setup(
    model="selfy_tsm_r50",
    num_classes=174,
    num_frames=8,
    input_size=224,
    model_kwargs={},
    stss_shape=(8, 8, 14, 14, 128),
    window=(5, 9, 9),
    block_shape=(64, 28, 28, 512),
    block_kwargs={},
    train_batch=8,
    infer_batches=(1, 32),
    reference_clips=2,
    agreement_clips=64,
)

SMOKE = Setup(
    model="selfy_tsm_r18",
    num_classes=5,
    num_frames=2,
    input_size=32,
    model_kwargs={"width_multiplier": 0.125, "selfy_channels": 8},
    stss_shape=(1, 2, 6, 6, 8),
    window=(3, 5, 5),
    block_shape=(4, 8, 8, 16),
    block_kwargs={
        "hidden_channels": 8,
        "window": (3, 9, 9),
        "extraction_channels": (2, 4, 8, 8),
        "integration_channels": (8, 8, 8, 8),
    },
    train_batch=2,
    infer_batches=(1, 2),
    reference_clips=2,
    agreement_clips=4,
)


# --------------------------------------------------------------------------- inputs


def fixed_clips(setup: Setup, count: int, seed: int) -> np.ndarray:
    """uint8 clips `[count, num_frames, size, size, 3]`, the same on every machine."""
    shape = (count, setup.num_frames, setup.input_size, setup.input_size, 3)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _fixed_value(path: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A deterministic value for the variable at `path` (its own NumPy stream)."""
    rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
    leaf = path.rsplit("/", 1)[-1]
    if leaf in ("gamma",):
        # Never zero, unlike the zero-initialised last BNs: every branch counts.
        return rng.uniform(0.2, 0.5, shape)
    if leaf in ("moving_variance",):
        return rng.uniform(0.75, 1.25, shape)
    if leaf in ("beta", "moving_mean", "bias"):
        return 0.05 * rng.standard_normal(shape)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))


def set_fixed_weights(model, seed: int = 0) -> float:
    """Overwrites every variable of `model` with fixed values; returns their sum (a checksum)."""
    total = 0.0
    for variable in model.weights:
        value = _fixed_value(variable.path, tuple(variable.shape), seed).astype(np.float32)
        variable.assign(value)
        total += float(value.sum(dtype=np.float64))
    return total


# --------------------------------------------------------------------------- timing


def _time(function: Callable[[], Any], sync: Callable[[Any], Any], warmup: int, iters: int) -> dict:
    """Median and minimum milliseconds of `function` (each call synchronised), after warm-up."""
    start = time.perf_counter()
    for _ in range(warmup):
        sync(function())
    warmup_s = time.perf_counter() - start
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(function())
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": float(np.median(times)),
        "min_ms": float(np.min(times)),
        "warmup_s": round(warmup_s, 3),
    }


def _try(results: dict, name: str, function: Callable[[], dict]) -> None:
    """Runs one case; a failure is recorded as `{name}_error` and the sweep goes on."""
    try:
        for key, value in function().items():
            results[f"{name}_{key}"] = value
    except Exception as error:  # noqa: BLE001 - a benchmark records and moves on
        logger.exception("case %s failed", name)
        results[f"{name}_error"] = f"{type(error).__name__}: {error}"[:500]


# --------------------------------------------------------------------------- JAX side


class JaxSide:
    """The Keras-on-JAX implementations of each case."""

    def __init__(self, setup: Setup):
        import jax
        import keras

        self.jax = jax
        self.keras = keras
        self.setup = setup
        self.device = jax.devices()[0]

    def sync(self, value):
        return self.jax.block_until_ready(value)

    def peak_bytes(self) -> int | None:
        stats = self.device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    def model(self, dtype_policy: str | None = None):
        from selfy_tf.models import create_model

        setup = self.setup
        return create_model(
            setup.model,
            num_classes=setup.num_classes,
            num_frames=setup.num_frames,
            input_size=setup.input_size,
            dtype_policy=dtype_policy,
            **setup.model_kwargs,
        )

    def forward_fn(self, model):
        """A jitted `(trainable, non_trainable, clips) -> float32 logits` (inference mode)."""
        jax = self.jax

        @jax.jit
        def forward(trainable, non_trainable, clips):
            logits, _ = model.stateless_call(trainable, non_trainable, clips, training=False)
            return logits.astype("float32")

        return forward

    @staticmethod
    def state(model):
        return (
            [variable.value for variable in model.trainable_variables],
            [variable.value for variable in model.non_trainable_variables],
        )

    def logits(self, model, clips: np.ndarray, precision: str | None = None) -> np.ndarray:
        forward = self.forward_fn(model)
        trainable, non_trainable = self.state(model)
        context = self.jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
        with context:
            return np.asarray(forward(trainable, non_trainable, clips))

    def stss_cases(self, warmup: int, iters: int) -> dict[str, dict]:
        jax = self.jax
        from keras import ops

        from selfy_tf.ops import stss

        window = self.setup.window
        features = jax.random.normal(jax.random.key(0), self.setup.stss_shape, "float32")
        forward = jax.jit(lambda x: stss(x, window=window))
        gradient = jax.jit(jax.grad(lambda x: ops.sum(stss(x, window=window) ** 2)))
        return {
            "stss_fwd": _time(lambda: forward(features), self.sync, warmup, iters),
            "stss_fwdbwd": _time(lambda: gradient(features), self.sync, warmup, iters),
        }

    def block_case(self, warmup: int, iters: int) -> dict:
        jax = self.jax
        keras = self.keras
        from selfy_tf.layers import SELFYBlock

        setup = self.setup
        block = SELFYBlock(
            num_frames=setup.num_frames, dtype="mixed_bfloat16", **setup.block_kwargs
        )
        block.build(setup.block_shape)
        features = jax.random.normal(jax.random.key(1), setup.block_shape, "float32")
        trainable, non_trainable = self.state(block)

        def loss(trainable, non_trainable, inputs):
            outputs, non_trainable = block.stateless_call(
                trainable, non_trainable, inputs, training=True
            )
            return keras.ops.mean(keras.ops.square(outputs.astype("float32"))), non_trainable

        step = jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))
        return _time(lambda: step(trainable, non_trainable, features), self.sync, warmup, iters)

    def train_case(self, warmup: int, iters: int) -> dict:
        jax = self.jax
        keras = self.keras
        setup = self.setup
        model = self.model("mixed_bfloat16")
        optimizer, optimizer_name = _recipe_optimizer(keras)
        optimizer.build(model.trainable_variables)
        trainable, non_trainable = self.state(model)
        optimizer_state = [variable.value for variable in optimizer.variables]
        clips = fixed_clips(setup, setup.train_batch, seed=3)
        labels = np.arange(setup.train_batch, dtype=np.int32) % setup.num_classes

        def loss(trainable, non_trainable, clips, labels):
            logits, non_trainable = model.stateless_call(
                trainable, non_trainable, clips, training=True
            )
            value = keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits.astype("float32"), from_logits=True
                )
            )
            return value, non_trainable

        gradient = jax.value_and_grad(loss, has_aux=True)

        @jax.jit
        def train_step(trainable, non_trainable, optimizer_state, clips, labels):
            (value, non_trainable), grads = gradient(trainable, non_trainable, clips, labels)
            trainable, optimizer_state = optimizer.stateless_apply(
                optimizer_state, grads, trainable
            )
            return trainable, non_trainable, optimizer_state, value

        state = [trainable, non_trainable, optimizer_state]

        def run():
            state[0], state[1], state[2], value = train_step(*state, clips, labels)
            return value

        timing = _time(run, self.sync, warmup, iters)
        timing["optimizer"] = optimizer_name
        peak = self.peak_bytes()
        if peak is not None:
            timing["peak_mb_per_clip"] = round(peak / 2**20 / setup.train_batch, 1)
        timing["clips_per_sec"] = round(setup.train_batch * 1000.0 / timing["median_ms"], 2)
        return timing

    def infer_case(self, model, batch: int, warmup: int, iters: int) -> dict:
        forward = self.forward_fn(model)
        trainable, non_trainable = self.state(model)
        clips = fixed_clips(self.setup, batch, seed=4)
        timing = _time(lambda: forward(trainable, non_trainable, clips), self.sync, warmup, iters)
        timing["clips_per_sec"] = round(batch * 1000.0 / timing["median_ms"], 2)
        return timing


def _recipe_optimizer(keras):
    """The recipe's torch-style SGD when it runs on this backend, else Keras SGD (same cost)."""
    try:
        from trainer.optimizer import TorchSGD

        def make():
            return TorchSGD(learning_rate=0.01, momentum=0.9, nesterov=True,
                            weight_decay=5e-4, clip_global_norm=20.0)

        probe, variable = make(), keras.Variable(np.ones((2,), np.float32))
        probe.build([variable])
        probe.stateless_apply(
            [v.value for v in probe.variables], [keras.ops.ones((2,))], [variable.value]
        )
        return make(), "TorchSGD"
    except Exception as error:  # noqa: BLE001 - no TensorFlow, or TorchSGD is TensorFlow-only
        logger.info("TorchSGD unavailable here (%s); timing keras.optimizers.SGD", error)
        return keras.optimizers.SGD(
            learning_rate=0.01, momentum=0.9, nesterov=True, global_clipnorm=20.0
        ), "keras.optimizers.SGD"


# --------------------------------------------------------------------------- PyTorch side


class TorchSide:
    """The plain-PyTorch reference of each case at its best settings."""

    def __init__(self, setup: Setup, compile_mode: str):
        import torch

        self.torch = torch
        self.setup = setup
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.compile = compile_mode == "on" or (compile_mode == "auto" and self.cuda)
        if self.cuda:
            torch.backends.cudnn.benchmark = True

    def sync(self, value):
        if self.cuda:
            self.torch.cuda.synchronize()
        return value

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16)

    def maybe_compile(self, function):
        return self.torch.compile(function) if self.compile else function

    def model(self):
        from selfy_tf.weights import torch_reference

        setup = self.setup
        model = torch_reference.build_reference(
            setup.model, setup.num_classes, setup.num_frames, stss_method="all_pairs", **setup.model_kwargs
        )
        return self.channels_last(model.to(self.device))

    def channels_last(self, module):
        """channels_last for the 2-D convolutions (3-D ones keep their layout)."""
        for layer in module.modules():
            if isinstance(layer, self.torch.nn.Conv2d):
                layer.to(memory_format=self.torch.channels_last)
        return module

    def stss_cases(self, warmup: int, iters: int) -> dict[str, dict]:
        torch = self.torch
        batch, frames, height, width, channels = self.setup.stss_shape
        window = self.setup.window
        from selfy_tf.weights.torch_reference import stss_all_pairs

        features = torch.randn(batch, frames, channels, height, width, device=self.device)

        def forward_only(x):
            with self.autocast():
                return stss_all_pairs(x, window)

        def forward_backward(x):
            x = x.detach().requires_grad_(True)
            with self.autocast():
                value = stss_all_pairs(x, window).float().square().sum()
            value.backward()
            return x.grad

        forward_only = self.maybe_compile(forward_only)
        forward_backward_compiled = self.maybe_compile(forward_backward)
        with torch.no_grad():
            fwd = _time(lambda: forward_only(features), self.sync, warmup, iters)
        return {
            "stss_fwd": fwd,
            "stss_fwdbwd": _time(
                lambda: forward_backward_compiled(features), self.sync, warmup, iters
            ),
        }

    def block_case(self, warmup: int, iters: int) -> dict:
        torch = self.torch
        from selfy_tf.weights.torch_reference import SELFYBlockReference

        setup = self.setup
        batch_frames, height, width, channels = setup.block_shape
        kwargs = dict(setup.block_kwargs)
        block = self.channels_last(
            SELFYBlockReference(channels, setup.num_frames, stss_method="all_pairs", **kwargs).to(self.device)
        )
        block.train()
        features = torch.randn(batch_frames, channels, height, width, device=self.device)
        features = features.to(memory_format=torch.channels_last)

        def step(x):
            x = x.detach().requires_grad_(True)
            with self.autocast():
                value = block(x).float().square().mean()
            value.backward()
            return x.grad

        step = self.maybe_compile(step)
        return _time(lambda: step(features), self.sync, warmup, iters)

    def train_case(self, warmup: int, iters: int) -> dict:
        torch = self.torch
        setup = self.setup
        model = self.model().train()
        optimizer = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        clips = torch.from_numpy(fixed_clips(setup, setup.train_batch, seed=3)).to(self.device)
        labels = torch.arange(setup.train_batch, device=self.device) % setup.num_classes
        forward = self.maybe_compile(model)

        def step():
            with self.autocast():
                logits = forward(clips)
            value = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 20.0)
            optimizer.step()
            return value

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        timing = _time(step, self.sync, warmup, iters)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated()
            timing["peak_mb_per_clip"] = round(peak / 2**20 / setup.train_batch, 1)
        timing["clips_per_sec"] = round(setup.train_batch * 1000.0 / timing["median_ms"], 2)
        return timing

    def infer_case(self, model, batch: int, warmup: int, iters: int) -> dict:
        torch = self.torch
        clips = torch.from_numpy(fixed_clips(self.setup, batch, seed=4)).to(self.device)

        def run():
            with torch.no_grad(), self.autocast():
                return model(clips)

        timing = _time(run, self.sync, warmup, iters)
        timing["clips_per_sec"] = round(batch * 1000.0 / timing["median_ms"], 2)
        return timing


# --------------------------------------------------------------------------- main


def make_reference(setup: Setup, path: Path, seed: int) -> dict:
    """Writes the CPU float32 logits of the fixed weights on the fixed clips."""
    import jax

    side = JaxSide(setup)
    model = side.model()
    checksum = set_fixed_weights(model, seed)
    clips = fixed_clips(setup, setup.reference_clips, seed=seed + 1)
    logits = side.logits(model, clips, precision="highest")
    path.parent.mkdir(parents=True, exist_ok=True)
    from selfy_tf.files import atomic_path

    with atomic_path(str(path)) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, logits=logits, weights_checksum=np.float64(checksum),
                     model=setup.model, seed=seed)
    return {"reference_file": str(path), "reference_device": jax.devices()[0].platform,
            "reference_logits_shape": list(logits.shape)}


def correctness(side: JaxSide, setup: Setup, reference: Path | None, seed: int) -> dict:
    model = side.model()
    checksum = set_fixed_weights(model, seed)
    result: dict[str, Any] = {}
    if reference is not None:
        if not reference.exists():
            raise FileNotFoundError(
                f"reference logits not found: {reference}; write them on a CPU first with "
                "`python benchmarks/bench_gpu.py --make-reference`"
            )
        data = np.load(reference)
        if str(data["model"]) != setup.model:
            raise ValueError(
                f"{reference} holds logits of {str(data['model'])!r}, this run builds "
                f"{setup.model!r}; pass --smoke or --full to match it"
            )
        result["weights_checksum_equal"] = bool(
            np.isclose(float(data["weights_checksum"]), checksum, rtol=1e-9)
        )
        clips = fixed_clips(setup, setup.reference_clips, seed=seed + 1)
        logits = side.logits(model, clips, precision="highest")
        scale = float(np.abs(data["logits"]).max())
        result["float32_max_rel_diff"] = float(np.abs(logits - data["logits"]).max() / scale)
        result["float32_within_1e-3"] = result["float32_max_rel_diff"] <= 1e-3
    clips = fixed_clips(setup, setup.agreement_clips, seed=seed + 2)
    float32_top1 = side.logits(model, clips).argmax(-1)
    bf16 = side.model("mixed_bfloat16")
    bf16.set_weights(model.get_weights())
    bf16_top1 = side.logits(bf16, clips).argmax(-1)
    result["bf16_top1_agreement"] = float(np.mean(float32_top1 == bf16_top1))
    result["bf16_agreement_clips"] = int(len(clips))
    return result


def _ratios(results: dict) -> None:
    for case in ("stss_fwd", "stss_fwdbwd", "block_fwdbwd", "train_step", "infer_b1",
                 "infer_b32", "infer_b2"):
        jax_ms, torch_ms = results.get(f"jax_{case}_median_ms"), results.get(f"torch_{case}_median_ms")
        if jax_ms and torch_ms:
            results[f"{case}_time_ratio"] = round(jax_ms / torch_ms, 3)
    jax_mem = results.get("jax_train_step_peak_mb_per_clip")
    torch_mem = results.get("torch_train_step_peak_mb_per_clip")
    if jax_mem and torch_mem:
        results["train_step_memory_ratio"] = round(jax_mem / torch_mem, 3)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny shapes (default on a CPU)")
    size.add_argument("--full", action="store_true", help="paper shapes (default on a GPU)")
    parser.add_argument("--cases", default="correctness,stss,block,train,infer",
                        help="comma-separated subset of correctness,stss,block,train,infer")
    parser.add_argument("--torch", choices=("on", "off"), default="on",
                        help="time the PyTorch reference beside JAX")
    parser.add_argument("--torch-compile", choices=("auto", "on", "off"), default="auto",
                        help="torch.compile the PyTorch cases (auto: on a GPU only)")
    parser.add_argument("--reference", type=Path, default=None,
                        help=f"CPU reference logits (default for --full: {REFERENCE_FILE})")
    parser.add_argument("--make-reference", action="store_true",
                        help="write the reference logits of this configuration and exit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed weights and clips")
    parser.add_argument("--num-warmup", type=int, default=None, help="untimed calls per case")
    parser.add_argument("--num-iters", type=int, default=None, help="timed calls per case")
    parser.add_argument("--profile-dir", default=None,
                        help="write a jax.profiler trace of the JAX training step here")
    parser.add_argument("--results-file", default=None, help="also write the JSON line here")
    return parser.parse_args(argv)


def _environment(setup: Setup, full: bool, warmup: int, iters: int) -> dict[str, Any]:
    """What the figures depend on: the configuration, the device and the versions."""
    import jax
    import keras

    return {
        "configuration": "full" if full else "smoke",
        "model": setup.model,
        "device": str(jax.devices()[0]),
        "jax_version": jax.__version__,
        "keras_version": keras.__version__,
        "keras_backend": keras.config.backend(),
        "python": platform.python_version(),
        "num_warmup": warmup,
        "num_iters": iters,
        "stss_shape": list(setup.stss_shape),
        "block_shape": list(setup.block_shape),
        "train_batch": setup.train_batch,
    }


def _run_cases(args: argparse.Namespace, setup: Setup, full: bool, warmup: int, iters: int, results: dict) -> None:
    """The chosen cases on JAX and, unless `--torch off`, on the PyTorch reference."""
    cases = {case.strip() for case in args.cases.split(",") if case.strip()}
    jax_side = JaxSide(setup)
    torch_side = None
    if args.torch == "on":
        torch_side = TorchSide(setup, args.torch_compile)
        import torch

        results["torch_version"] = torch.__version__
        results["torch_device"] = str(torch_side.device)
        results["torch_compile"] = torch_side.compile

    # Training first: the peak memory statistics cover the whole process.
    if "train" in cases:
        _try(results, "jax_train_step", lambda: jax_side.train_case(warmup, iters))
        if args.profile_dir:
            _try(results, "jax_profile", lambda: _profile(jax_side, args.profile_dir))
        if torch_side:
            _try(results, "torch_train_step", lambda: torch_side.train_case(warmup, iters))
    if "correctness" in cases:
        reference = args.reference or (_default_reference(full) if full else None)
        _try(results, "correctness", lambda: correctness(jax_side, setup, reference, args.seed))
    for name, side in (("jax", jax_side), ("torch", torch_side)):
        if side is None:
            continue
        if "stss" in cases:
            _try(results, f"{name}_stss", lambda side=side: _flatten(side.stss_cases(warmup, iters)))
        if "block" in cases:
            _try(results, f"{name}_block_fwdbwd", lambda side=side: side.block_case(warmup, iters))
        if "infer" in cases:
            model = jax_side.model("mixed_bfloat16") if name == "jax" else side.model().eval()
            for batch in setup.infer_batches:
                _try(results, f"{name}_infer_b{batch}",
                     lambda side=side, model=model, batch=batch: side.infer_case(model, batch, warmup, iters))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import jax

    on_gpu = jax.default_backend() == "gpu"
    full = args.full or (on_gpu and not args.smoke)
    setup = FULL if full else SMOKE
    warmup = args.num_warmup if args.num_warmup is not None else (5 if full else 1)
    iters = args.num_iters if args.num_iters is not None else (20 if full else 2)
    results = _environment(setup, full, warmup, iters)
    if args.make_reference:
        results.update(make_reference(setup, args.reference or _default_reference(full), args.seed))
        write_results(results, args.results_file)
        return 0
    _run_cases(args, setup, full, warmup, iters, results)
    _rename_stss(results)
    _ratios(results)
    write_results(results, args.results_file)
    return 0


def _default_reference(full: bool) -> Path:
    return REFERENCE_FILE if full else REFERENCE_FILE.with_name("bench_gpu_reference_smoke.npz")


def _flatten(cases: dict[str, dict]) -> dict:
    return {f"{case}_{key}": value for case, timing in cases.items() for key, value in timing.items()}


def _rename_stss(results: dict) -> None:
    """`jax_stss_stss_fwd_median_ms` → `jax_stss_fwd_median_ms`."""
    for key in [key for key in results if "_stss_stss_" in key]:
        results[key.replace("_stss_stss_", "_stss_")] = results.pop(key)


def _profile(side: JaxSide, directory: str) -> dict:
    import jax

    with jax.profiler.trace(directory):
        side.train_case(warmup=1, iters=3)
    return {"trace_dir": directory}


def _set_backend_environment() -> None:
    """Keras on JAX, and JAX leaving GPU memory to PyTorch; before Keras is imported."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
        raise SystemExit(
            f"bench_gpu.py runs Keras on JAX; KERAS_BACKEND={os.environ['KERAS_BACKEND']!r} "
            "was set. Unset it or set KERAS_BACKEND=jax."
        )


if __name__ == "__main__":
    _set_backend_environment()
    sys.exit(main())
