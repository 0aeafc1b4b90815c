"""Training throughput (clips/s) on this machine, and whether input or model is the bottleneck.

    python benchmarks/bench_train.py                      # full sweep
    python benchmarks/bench_train.py --models tiny_cpu --iterations 5
    python benchmarks/bench_train.py --models selfy_tsm_r50 tsm_r50 --xla off \
        --precision float32 --torch-models selfy_tsm_r50,tsm_r50

Cases: models {tiny_cpu, selfy_tsm_r50 at 8x224x224 batch 2; tsm_r50, the
same recipe without the SELFY block, when asked} x XLA {off, on} x precision
{float32, mixed (bfloat16 on CPU, float16 on GPU)}. Each case
times `train_on_batch` with the trainer's optimizer and loss on a fixed
batch (warm-up untimed), under the trainer's STSS XLA switch
(`runtime.stss_xla`, on by default), so it measures the trainer's model step
alone; the first
warm-up step (tracing, and with XLA its compilation) is reported apart as
`..._first_step_ms`, the fixed cost a run pays once. The input
pipeline (`tfrecords.make_dataset`, training mode, on a synthetic dataset
written at the stored size of the model's preset) is timed separately
(`--input-batches 0` skips it); `bottleneck_<model>` says which of the two is slower.

`--torch-models` times the training step of the PyTorch reference of those
models (`selfy_tf.weights.torch_reference`: the official release's layers,
its SELFY block computing the STSS the official plain-PyTorch way), CPU only,
float32, eager, `torch.set_num_threads(--threads)`, train mode, on the same
batch and recipe: cross-entropy, SGD with Nesterov momentum 0.9, weight decay
5e-4 on weights and none on biases and batch norms, biases at 2x the learning
rate, gradients clipped to global norm 20 (the reference has no dropout
layer, a negligible cost). It is timed just before and just after our float32,
XLA-off case of the model (`..._before_ms`, `..._after_ms`, their mean
`train_torch_<model>_float32_step_time_ms`), and
`<model>_over_torch_step_time_ratio` is ours / official (lower is faster).

Prints ONE JSON line on stdout with flat keys, e.g.
`train_tiny_cpu_xla_off_float32_clips_per_sec`; logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

from _common import limit_threads, torch_reference_models, write_results

logger = logging.getLogger("bench_train")

MODELS = {
    # name: (preset, overrides, stored frame size (h, w), stored frames)
    "tiny_cpu": ("tiny_cpu", ["model.num_classes=4"], (40, 48), 6),
    "selfy_tsm_r50": (
        "ssv1_selfy_r50_8f",
        ["data.batch_size=2", "model.num_classes=174"],
        (240, 320),
        8,
    ),
    "tsm_r50": (
        "ssv1_selfy_r50_8f",
        ["data.batch_size=2", "model.name=tsm_r50", "model.num_classes=174"],
        (240, 320),
        8,
    ),
}
DEFAULT_MODELS = ("selfy_tsm_r50", "tiny_cpu")


def _model_step_case(config, xla: bool, precision: str, warmup: int, iterations: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from selfy_tf.ops import stss_xla
    from trainer.schedules import make_schedule
    from trainer.train import build_model, compile_for_training

    # clear_session() resets the global dtype policy: clear first, then set.
    keras.utils.clear_session()
    keras.config.set_dtype_policy(precision)
    try:
        model = build_model(config)
        if model.get_layer("layer1_0_conv1").compute_dtype != keras.config.dtype_policy().compute_dtype:
            raise RuntimeError(f"the model was not built under the {precision} policy")
        schedule = make_schedule(config.schedule, 0.01, 100, config.train.epochs)
        compile_for_training(model, config, schedule, jit_compile=xla)
        batch = config.data.batch_size
        frames, labels = (tf.constant(array) for array in _step_batch(config))
        # As `trainer.train` does: the step is traced with the STSS op's
        # XLA switch of the config.
        with stss_xla(config.runtime.stss_xla):
            start = time.perf_counter()
            model.train_on_batch(frames, labels)
            first_step = time.perf_counter() - start
            for _ in range(warmup - 1):
                model.train_on_batch(frames, labels)
            start = time.perf_counter()
            for _ in range(iterations):
                loss = model.train_on_batch(frames, labels)
            elapsed = time.perf_counter() - start
        step = elapsed / iterations
        return {
            "step_time_ms": 1000.0 * step,
            "first_step_ms": 1000.0 * first_step,
            "clips_per_sec": batch / step,
            "final_loss": float(np.ravel(loss)[0]),
        }
    finally:
        keras.config.set_dtype_policy("float32")


def _step_batch(config):
    """The fixed training batch of a case: uint8 clips and one-hot labels, as numpy arrays."""
    import numpy as np

    batch = config.data.batch_size
    shape = (batch, config.model.num_frames, config.model.input_size, config.model.input_size, 3)
    frames = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    labels = np.eye(config.model.num_classes, dtype=np.float32)[np.arange(batch) % config.model.num_classes]
    return frames, labels


def _torch_training_step(config, threads: int):
    """The PyTorch reference's training step for `config`'s model, batch and recipe; returns `step()`."""
    import torch
    from torch import nn

    model_config, optimizer_config = config.model, config.optimizer
    name = model_config.name.split(".")[0]
    model = torch_reference_models(
        [name], model_config.num_classes, model_config.num_frames, threads,
        width_multiplier=model_config.width_multiplier, selfy_channels=model_config.selfy_channels,
        selfy_stage=model_config.selfy_stage,
    )[name].train()
    # The official optimizer policy's groups: decay on weights only, biases at 2x.
    weights, biases, batch_norms = [], [], []
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
            batch_norms.extend(module.parameters(recurse=False))
        else:
            for parameter_name, parameter in module.named_parameters(recurse=False):
                (biases if parameter_name == "bias" else weights).append(parameter)
    learning_rate = 0.01
    optimizer = torch.optim.SGD(
        [
            {"params": weights},
            {"params": biases, "lr": learning_rate * optimizer_config.bias_lr_mult, "weight_decay": 0.0},
            {"params": batch_norms, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        momentum=optimizer_config.momentum,
        nesterov=optimizer_config.nesterov,
        weight_decay=optimizer_config.weight_decay,
    )
    frames, labels = _step_batch(config)
    clips = torch.from_numpy(frames.astype("float32"))
    targets = torch.from_numpy(labels.argmax(axis=1))

    def step() -> float:
        loss = nn.functional.cross_entropy(model(clips), targets, label_smoothing=config.loss.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer_config.clip_global_norm:
            nn.utils.clip_grad_norm_(model.parameters(), optimizer_config.clip_global_norm)
        optimizer.step()
        return loss.detach().item()

    return step


def _time_torch_steps(step, warmup: int, iterations: int) -> float:
    """Seconds per step: the mean of `iterations` timed steps after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations


def _input_case(config, stored_size, stored_frames, batches: int) -> dict:
    import numpy as np

    from tfrecords import make_dataset, write_split

    with tempfile.TemporaryDirectory() as directory:
        rng = np.random.default_rng(0)
        num_clips = max(16, config.data.batch_size * (batches + 2))
        clips = (
            (rng.integers(0, 255, (stored_frames, *stored_size, 3), dtype=np.uint8), index % 2, f"c{index}")
            for index in range(num_clips)
        )
        write_split(directory, "train", clips, ["a", "b"], num_shards=2)
        dataset = make_dataset(
            os.path.join(directory, "train-*.tfrecord"),
            training=True,
            num_frames=config.model.num_frames,
            batch_size=config.data.batch_size,
            crop_size=config.model.input_size,
            seed=0,
            repeat=True,
        )
        iterator = iter(dataset)
        next(iterator)  # warm-up: tracing, first files
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        elapsed = time.perf_counter() - start
    return {"clips_per_sec": batches * config.data.batch_size / elapsed, "batch_time_ms": 1000.0 * elapsed / batches}


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(DEFAULT_MODELS),
                        help=f"models to time (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off", "on"], help="XLA settings")
    parser.add_argument("--precision", nargs="+", choices=("float32", "mixed"), default=["float32", "mixed"],
                        help="float32 and/or mixed (bfloat16 on CPU, float16 on GPU)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per case, the first timed apart as first_step_ms (default: 2)")
    parser.add_argument("--iterations", type=int, default=5, help="timed steps per case (default: 5; r50 uses min(this, 3))")
    parser.add_argument("--input-batches", type=int, default=10,
                        help="timed input-pipeline batches; 0 skips the input pipeline (default: 10)")
    parser.add_argument("--threads", type=int, default=2, help="TF intra/inter-op threads (default: 2)")
    parser.add_argument("--torch-models", default="",
                        help="comma-separated models of --models whose PyTorch reference (official layers, "
                             "CPU, float32) is timed before and after our float32 XLA-off case, for "
                             "<model>_over_torch_step_time_ratio (needs torch; default: none)")
    parser.add_argument("--results-file", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error(f"--warmup must be at least 1 (the first step is timed apart). Received: {args.warmup}.")
    if args.input_batches < 0:
        parser.error(f"--input-batches must be >= 0 (0 skips the input pipeline). Received: {args.input_batches}.")
    args.torch_models = [name.strip() for name in args.torch_models.split(",") if name.strip()]
    outside = [name for name in args.torch_models if name not in args.models]
    if outside:
        parser.error(f"--torch-models must be among --models {args.models}. Received: {outside}.")
    if args.torch_models and ("off" not in args.xla or "float32" not in args.precision):
        parser.error("--torch-models compares with our float32, XLA-off step: give --xla with off and "
                     f"--precision with float32. Received: --xla {' '.join(args.xla)} "
                     f"--precision {' '.join(args.precision)}.")
    return args


def _torch_before(name: str, config, args: argparse.Namespace, iterations: int, on_gpu: bool,
                  results: dict):
    """Builds and times the PyTorch reference's step before ours: `(step, seconds)`, or None."""
    key = f"train_torch_{name}_float32"
    if on_gpu:
        results[f"{key}_error"] = "the PyTorch reference is timed on CPU only"
        return None
    logger.info("case %s (before ours)", key)
    try:
        step = _torch_training_step(config, args.threads)
        seconds = _time_torch_steps(step, args.warmup, iterations)
    except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
        results[f"{key}_error"] = f"{type(error).__name__}: {error}"[:300]
        logger.info("  error: %s", error)
        return None
    logger.info("  %.1f ms/step", 1000.0 * seconds)
    return step, seconds


def _torch_after(name: str, config, before, iterations: int, results: dict) -> None:
    """Times the PyTorch step again after ours; records both, their mean and ours / official."""
    step, seconds_before = before
    key = f"train_torch_{name}_float32"
    logger.info("case %s (after ours)", key)
    try:
        # One untimed step: our case ran in between and took the caches.
        seconds_after = _time_torch_steps(step, 1, iterations)
    except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
        results[f"{key}_error"] = f"{type(error).__name__}: {error}"[:300]
        return
    mean = (seconds_before + seconds_after) / 2
    results[f"{key}_step_time_before_ms"] = round(1000.0 * seconds_before, 2)
    results[f"{key}_step_time_after_ms"] = round(1000.0 * seconds_after, 2)
    results[f"{key}_step_time_ms"] = round(1000.0 * mean, 2)
    results[f"{key}_clips_per_sec"] = round(config.data.batch_size / mean, 3)
    ours = results.get(f"train_{name}_xla_off_float32_step_time_ms")
    if ours:
        results[f"{name}_over_torch_step_time_ratio"] = round(ours / (1000.0 * mean), 4)
    logger.info("  %.1f ms/step (mean of before and after: %.1f)", 1000.0 * seconds_after, 1000.0 * mean)


def _time_model_steps(name: str, config, args: argparse.Namespace, on_gpu: bool, results: dict) -> list[float]:
    """The training step of one model for each XLA setting and precision; returns the clips/s reached.

    With `--torch-models` the PyTorch reference's step is timed just before and
    just after our float32, XLA-off case.
    """
    iterations = args.iterations if name == "tiny_cpu" else min(args.iterations, 3)
    model_rates = []
    for xla in args.xla:
        for precision in args.precision:
            policy = "float32" if precision == "float32" else ("mixed_float16" if on_gpu else "mixed_bfloat16")
            key = f"train_{name}_xla_{xla}_{precision}"
            torch_before = None
            if name in args.torch_models and (xla, precision) == ("off", "float32"):
                torch_before = _torch_before(name, config, args, iterations, on_gpu, results)
            logger.info("case %s (%s)", key, policy)
            try:
                case = _model_step_case(config, xla == "on", policy, args.warmup, iterations)
                results[f"{key}_step_time_ms"] = round(case["step_time_ms"], 2)
                results[f"{key}_first_step_ms"] = round(case["first_step_ms"], 1)
                results[f"{key}_clips_per_sec"] = round(case["clips_per_sec"], 3)
                model_rates.append(case["clips_per_sec"])
                logger.info("  %.1f ms/step, %.2f clips/s", case["step_time_ms"], case["clips_per_sec"])
            except Exception as error:  # noqa: BLE001 - a failed case is recorded, the sweep goes on
                results[f"{key}_error"] = f"{type(error).__name__}: {error}"[:300]
                logger.info("  error: %s", error)
            if torch_before is not None:
                _torch_after(name, config, torch_before, iterations, results)
    return model_rates


def _time_input(name: str, config, model_rates: list[float], args: argparse.Namespace, results: dict) -> None:
    """The model's input pipeline alone, and whether it or the model bounds training."""
    _, _, stored_size, stored_frames = MODELS[name]
    try:
        case = _input_case(config, stored_size, stored_frames, args.input_batches)
        results[f"input_{name}_clips_per_sec"] = round(case["clips_per_sec"], 3)
        results[f"input_{name}_batch_time_ms"] = round(case["batch_time_ms"], 2)
        if model_rates:
            best_model = max(model_rates)
            results[f"bottleneck_{name}"] = "input" if case["clips_per_sec"] < best_model else "model"
            results[f"input_to_model_ratio_{name}"] = round(case["clips_per_sec"] / best_model, 3)
    except Exception as error:  # noqa: BLE001
        results[f"input_{name}_error"] = f"{type(error).__name__}: {error}"[:300]


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import tensorflow as tf

    limit_threads(args.threads)
    from trainer import configs, presets

    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    results = {
        "tf_version": tf.__version__,
        "device": "gpu" if on_gpu else "cpu",
        "threads": args.threads,
        "warmup_steps": args.warmup,
        "load_average_1min": os.getloadavg()[0],
    }
    if args.torch_models:
        import torch

        results["torch_version"] = torch.__version__
    for name in args.models:
        preset, overrides, _, _ = MODELS[name]
        config = configs.resolve_model(configs.apply_overrides(presets.get_preset(preset), overrides))
        results[f"{name}_batch"] = config.data.batch_size
        results[f"{name}_frames"] = config.model.num_frames
        results[f"{name}_input_size"] = config.model.input_size
        model_rates = _time_model_steps(name, config, args, on_gpu, results)
        if args.input_batches:
            _time_input(name, config, model_rates, args, results)
    results["load_average_1min_end"] = os.getloadavg()[0]
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
