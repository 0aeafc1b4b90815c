"""LiteRT latency and size of converted models vs the SavedModel on CPU.

    python benchmarks/bench_tflite.py --models selfy_tsm_r18,selfy_tsm_r50 \\
        --modes none,fp16,int8 --threads 2 --results-file bench_tflite.json

For each model (8 frames at 224x224 by default, random weights: latency does
not depend on the values), exports the conversion SavedModel once, times it
with TensorFlow on CPU (`tf.saved_model.load`, intra/inter-op threads =
`--threads`), converts it to TFLite in each mode, and times each flatbuffer
with the LiteRT interpreter (`--threads` threads, XNNPACK as shipped).
Full-integer models are calibrated on `--calibration-clips` random clips
(their ranges do not change the speed). Warm-up runs are not timed; then
`--iterations` timed runs per case (models listed in `--once` run a single
timed iteration). Prints ONE JSON line to stdout with flat keys
`<model>_<case>_latency_ms` / `_size_mb` and the ratios measured in this
run (`<model>_int8_speedup_vs_none`, `<model>_none_speedup_vs_savedmodel`);
a failing case records `<model>_<case>_error` and the sweep goes on. Logs go
to stderr.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
from _common import limit_threads, write_results

logger = logging.getLogger("bench_tflite")


def _directory_size(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.path.getsize(os.path.join(root, name))
    return total


def _timed(function, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _time_saved_model(name: str, directory: str, clip: np.ndarray, warmup: int, iterations: int,
                      results: dict) -> None:
    """Latency of the exported SavedModel's signature, the baseline of the LiteRT models."""
    import tensorflow as tf

    from serving import tflite

    try:
        loaded = tf.saved_model.load(directory)
        signature = loaded.signatures[tflite.SIGNATURE_KEY]
        frames = tf.constant(clip)
        latency = _timed(functools.partial(signature, frames=frames), warmup, iterations)
        results[f"{name}_savedmodel_latency_ms"] = round(latency, 2)
        logger.info("%s: SavedModel %.1f ms", name, latency)
        del loaded, signature
    except Exception as error:  # the sweep goes on
        logger.exception("%s: SavedModel failed", name)
        results[f"{name}_savedmodel_error"] = f"{type(error).__name__}: {error}"


def _convert_and_time(name: str, mode: str, directory: str, representative, clip: np.ndarray,
                      args: argparse.Namespace, warmup: int, iterations: int, results: dict) -> None:
    """One quantize mode: conversion time, size, operators and LiteRT latency."""
    from serving import tflite, tflite_inspect
    from serving.tflite_runtime import TFLiteClassifier

    key = f"{name}_{mode}"
    try:
        start = time.perf_counter()
        model_bytes = tflite.convert_saved_model(
            directory, mode, representative if mode == "int8" else None
        )
        results[f"{key}_convert_s"] = round(time.perf_counter() - start, 1)
        results[f"{key}_size_mb"] = round(len(model_bytes) / 2**20, 3)
        operators = tflite_inspect.list_operators(model_bytes)
        results[f"{key}_num_ops"] = len(operators)
        results[f"{key}_flex_ops"] = len(tflite_inspect.flex_ops(operators))
        if mode == "int8":
            results[f"{key}_non_int8_compute_ops"] = len(
                tflite_inspect.non_int8_compute_ops(operators)
            )
        classifier = TFLiteClassifier(model_bytes, num_threads=args.threads)
        latency = _timed(functools.partial(classifier.predict, clip), warmup, iterations)
        results[f"{key}_latency_ms"] = round(latency, 2)
        logger.info(
            "%s %s: %.1f ms, %.2f MB", name, mode, latency, len(model_bytes) / 2**20
        )
        del classifier, model_bytes
    except Exception as error:  # the sweep goes on
        logger.exception("%s %s failed", name, mode)
        results[f"{key}_error"] = f"{type(error).__name__}: {error}"


def _record_speedups(name: str, modes: list[str], results: dict) -> None:
    """Each quantized model against float32, and float32 LiteRT against the SavedModel."""
    for mode in modes:
        if mode == "none":
            continue
        fast, base = results.get(f"{name}_{mode}_latency_ms"), results.get(f"{name}_none_latency_ms")
        if fast and base:
            results[f"{name}_{mode}_speedup_vs_none"] = round(base / fast, 2)
    fp32, saved = results.get(f"{name}_none_latency_ms"), results.get(f"{name}_savedmodel_latency_ms")
    if fp32 and saved:
        results[f"{name}_none_speedup_vs_savedmodel"] = round(saved / fp32, 2)


def _bench_model(name: str, args: argparse.Namespace, results: dict) -> None:
    from selfy_tf.models import create_model
    from serving import tflite

    iterations = 1 if name in args.once else args.iterations
    warmup = 1 if name in args.once else args.warmup
    rng = np.random.default_rng(0)
    shape = (1, args.num_frames, args.input_size, args.input_size, 3)
    clip = rng.integers(0, 256, shape, dtype=np.uint8)
    start = time.perf_counter()
    model = create_model(
        name,
        num_classes=args.num_classes,
        num_frames=args.num_frames,
        input_size=args.input_size,
        width_multiplier=args.width_multiplier,
    )
    results[f"{name}_param_count_m"] = round(model.count_params() / 1e6, 3)
    directory = tempfile.mkdtemp(prefix="bench_tflite_")
    try:
        tflite.export_for_conversion(model, directory)
        logger.info("%s: exported in %.1f s", name, time.perf_counter() - start)
        results[f"{name}_savedmodel_size_mb"] = round(_directory_size(directory) / 2**20, 3)
        _time_saved_model(name, directory, clip, warmup, iterations, results)

        def representative():
            for _ in range(args.calibration_clips):
                yield {"frames": rng.integers(0, 256, shape, dtype=np.uint8)}

        for mode in args.modes:
            _convert_and_time(name, mode, directory, representative, clip, args, warmup, iterations, results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    _record_speedups(name, args.modes, results)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", default="selfy_tsm_r18,selfy_tsm_r50", help="comma-separated zoo names")
    parser.add_argument("--modes", default="none,fp16,int8", help="comma-separated quantize modes")
    parser.add_argument("--once", default="selfy_tsm_r50", help="models timed with a single iteration")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--input-size", type=int, default=224, help="frame side")
    parser.add_argument("--num-classes", type=int, default=174, help="classes")
    parser.add_argument("--width-multiplier", type=float, default=1.0, help="backbone width scale")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT and TensorFlow CPU threads")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    parser.add_argument("--iterations", type=int, default=10, help="timed runs")
    parser.add_argument("--calibration-clips", type=int, default=4, help="random int8 calibration clips")
    parser.add_argument("--results-file", default=None, help="also write the JSON line here")
    args = parser.parse_args(argv)
    args.models = [name for name in args.models.split(",") if name]
    args.modes = [mode for mode in args.modes.split(",") if mode]
    args.once = set(name for name in args.once.split(",") if name)
    return args


def _litert_version() -> str:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:  # metadata missing in odd installs
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import tensorflow as tf

    limit_threads(args.threads)
    import ai_edge_litert  # noqa: F401

    from serving import tflite

    for mode in args.modes:
        tflite.check_quantize(mode)
    results: dict = {
        "benchmark": "tflite",
        "tf_version": tf.__version__,
        "litert_version": _litert_version(),
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "batch": 1,
        "num_frames": args.num_frames,
        "input_size": args.input_size,
        "num_classes": args.num_classes,
        "width_multiplier": args.width_multiplier,
        "input_dtype": "uint8",
        "xla": False,
        "iterations": args.iterations,
        "warmup": args.warmup,
        "models": args.models,
        "modes": args.modes,
    }
    for name in args.models:
        try:
            _bench_model(name, args, results)
        except Exception as error:  # the sweep goes on
            logger.exception("%s failed", name)
            results[f"{name}_error"] = f"{type(error).__name__}: {error}"
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
