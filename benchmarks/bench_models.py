"""Inference time per clip of the model zoo: TSN / TSM / SELFYNet at R18 and R50.

    python3 benchmarks/bench_models.py --quick
    python3 benchmarks/bench_models.py --results-file results.json

For each precision (Keras dtype policy), XLA setting and batch size, every
model gets untimed warm-up calls (tracing, XLA compilation), then the models
are timed in turns: each round calls every model once, so that a change of
machine load hits all of them alike and the SELFY/TSM ratio stays fair. Each
call is `model(clips, training=False)` inside one `tf.function`, on random
0..255 clips of 8 x 224² frames.

Prints ONE JSON object on stdout: the setup, the milliseconds per clip
(median over rounds) of every case
(`<model>_b<batch>_xla<0|1>_<precision>_infer_ms_per_clip`; `..._min_ms...`
the fastest round), the SELFY/TSM time ratios (median over rounds of the
ratio within a round; `..._min_time_ratio` the ratio of the fastest rounds,
which resists the steal time of virtual machines: it only slows calls), the targets
(selfy_tsm_r50 / tsm_r50 <= 1.12 and selfy_tsm_r50 <= 310 ms per clip at
batch 1, 2 threads) and the matrix-product throughput of this machine (a 4096² `tf.matmul` per
precision), from which `<model>_<precision>_roofline_ms_per_clip` is the time
the model's multiply-accumulates alone would take at that throughput (a
bound where `tf.matmul` runs near the CPU's peak, as with oneDNN on AVX-512;
where it does not, as on an AVX2 AMD EPYC, convolutions beat it). Logs go to stderr; a
failing case records its error and the sweep goes on.

`--fold-batch-norms` adds `<model>_folded` (batch norms folded into the
convolutions, as `selfy export` serves the model) to the same rounds;
`--torch-models tsm_r50,selfy_tsm_r50` adds the PyTorch reference of those
models (`torch_<model>_b<batch>_<precision>`, bfloat16 through
`torch.autocast`; a SELFY block computes the STSS the official release's
plain-PyTorch way) and `<model>_over_torch_..._time_ratio`.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

import numpy as np
from _common import limit_threads, matmul_gflops, torch_reference_models, write_results

logger = logging.getLogger("bench_models")

DEFAULT_MODELS = ("tsn_r18", "tsm_r18", "selfy_tsm_r18", "tsn_r50", "tsm_r50", "selfy_tsm_r50")
QUICK_MODELS = ("tsm_r50", "selfy_tsm_r50")
TARGET_RATIO = 1.12
TARGET_SELFY_R50_MS = 310.0
_MATMUL_SIZE = 4096


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", help=f"comma-separated zoo names (default {','.join(DEFAULT_MODELS)})")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--xla", help="XLA settings to run: off, on or off,on (default off,on)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="comma-separated Keras dtype policies (mixed_float16 on GPUs; bfloat16 "
                             "is fast only on CPUs with AVX512-BF16 or AMX)")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--input-size", type=int, default=224, help="frame height and width")
    parser.add_argument("--num-classes", type=int, default=174, help="classifier outputs")
    parser.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads")
    parser.add_argument("--num-warm-iter", type=int, default=2, help="untimed warm-up calls per model")
    parser.add_argument("--num-bench-iter", type=int, help="timed rounds, one call per model (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="defaults for a short run: tsm_r50 and selfy_tsm_r50, batch 1, XLA off, "
                             "3 rounds (options given explicitly still apply)")
    parser.add_argument("--fold-batch-norms", action="store_true",
                        help="also time each model with its batch norms folded into the convolutions "
                             "(`selfy_tf.models.fold_batch_norms`, as `selfy export` serves it), as "
                             "`<model>_folded`")
    parser.add_argument("--torch-models", default="",
                        help="also time these models in PyTorch, in the same rounds (needs torch; "
                             "the layers of the official release, eager, NCHW; bfloat16 via torch.autocast)")
    parser.add_argument("--results-file", default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    defaults = {"models": ",".join(DEFAULT_MODELS), "batch_sizes": "1,8", "xla": "off,on", "num_bench_iter": 5}
    if args.quick:
        defaults = {"models": ",".join(QUICK_MODELS), "batch_sizes": "1", "xla": "off", "num_bench_iter": 3}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _case_key(model: str, batch: int, xla: bool, precision: str) -> str:
    return f"{model}_b{batch}_xla{int(xla)}_{precision}"


def _cpu_flags() -> list[str]:
    """The CPU features that decide bfloat16 speed (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(flag for flag in flags if flag.startswith(("avx512_bf16", "amx")))
    except OSError:
        pass
    return []


def _time_in_turns(forwards: dict, clips, warm: int, rounds: int, errors: dict, keys: dict) -> dict:
    """Warms every forward function, then times them one call each per round."""
    durations = {}
    for name, forward in forwards.items():
        try:
            for _ in range(warm):
                forward(clips).numpy()
            durations[name] = []
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            errors[keys[name]] = f"{type(error).__name__}: {error}"
            logger.error("%s: %s", keys[name], errors[keys[name]])
    for _ in range(rounds):
        for name in list(durations):
            start = time.perf_counter()
            forwards[name](clips).numpy()
            durations[name].append(time.perf_counter() - start)
    return durations


def _torch_forwards(models: dict, precision: str, clips) -> dict:
    """Forward functions of the PyTorch models on `clips`, called like the Keras ones."""
    import torch

    autocast = {"float32": None, "mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}
    if precision not in autocast:
        raise ValueError(f"no PyTorch counterpart of precision {precision!r}")
    dtype = autocast[precision]
    frames = torch.from_numpy(clips.numpy())

    def forward(model):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            return model(frames).float()

    return {f"torch_{name}": (lambda _clips, model=model: forward(model)) for name, model in models.items()}


def _median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-round ratios: cancels load drift between rounds."""
    return round(float(np.median(np.asarray(numerators) / np.asarray(denominators))), 4)


def _environment(args: argparse.Namespace, precisions: list[str]) -> dict[str, object]:
    """What the figures depend on: versions, device, CPU flags, the case's shape and the load."""
    import keras
    import tensorflow as tf

    return {
        "benchmark": "bench_models",
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        "cpu": platform.processor() or platform.machine(),
        "cpu_bf16_flags": _cpu_flags(),
        "threads": args.threads,
        "num_frames": args.num_frames,
        "input_size": args.input_size,
        "num_classes": args.num_classes,
        "precisions": precisions,
        "num_warm_iter": args.num_warm_iter,
        "num_bench_iter": args.num_bench_iter,
        "load_average_1min": os.getloadavg()[0],
    }


def _build_models(args: argparse.Namespace, models: list[str], precision: str, gflops: float,
                  gmacs: dict[str, float], results: dict, errors: dict) -> dict:
    """The models of one precision (and their folded copies), with their MACs and roofline."""
    from selfy_tf.models import count_macs, create_model, fold_batch_norms

    built = {}
    for name in models:
        try:
            built[name] = create_model(name, num_classes=args.num_classes, num_frames=args.num_frames,
                                       input_size=args.input_size, dtype_policy=precision)
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            errors[f"{name}_{precision}"] = f"{type(error).__name__}: {error}"
            logger.error("%s: %s", name, errors[f"{name}_{precision}"])
            continue
        if name not in gmacs:
            gmacs[name] = count_macs(built[name]) / 1e9
            results[f"{name}_gmacs"] = round(gmacs[name], 3)
            results[f"{name}_param_count_m"] = round(built[name].count_params() / 1e6, 3)
        results[f"{name}_{precision}_roofline_ms_per_clip"] = round(2000.0 * gmacs[name] / gflops, 1)
        if args.fold_batch_norms:
            built[f"{name}_folded"] = fold_batch_norms(built[name])
    return built


def _record_durations(durations: dict, keys: dict, batch: int, results: dict) -> None:
    """Per-clip figures of each model of a case: median, mean, fastest, clips per second."""
    for name, times in durations.items():
        # The median resists load spikes on a shared machine.
        ms_per_clip = 1000.0 * float(np.median(times)) / batch
        results[f"{keys[name]}_infer_ms_per_clip"] = round(ms_per_clip, 2)
        results[f"{keys[name]}_infer_mean_ms_per_clip"] = round(1000.0 * float(np.mean(times)) / batch, 2)
        results[f"{keys[name]}_infer_min_ms_per_clip"] = round(1000.0 * min(times) / batch, 2)
        results[f"{keys[name]}_infer_clips_per_sec"] = round(1000.0 / ms_per_clip, 3)
        logger.info("%s: %.1f ms per clip", keys[name], ms_per_clip)


def _record_ratios(durations: dict, torch_models: dict, batch: int, xla: bool, precision: str,
                   results: dict) -> None:
    """SELFY over TSM (plain and folded) and ours over PyTorch, from the same rounds."""
    for depth in ("r18", "r50"):
        for variant in ("", "_folded"):
            selfy = durations.get(f"selfy_tsm_{depth}{variant}")
            tsm = durations.get(f"tsm_{depth}{variant}")
            if selfy and tsm:
                key = f"selfy_over_tsm_{depth}{variant}_b{batch}_xla{int(xla)}_{precision}"
                results[f"{key}_time_ratio"] = _median_ratio(selfy, tsm)
                # Steal time on a virtual machine only slows calls down.
                results[f"{key}_min_time_ratio"] = round(min(selfy) / min(tsm), 4)
    for name in torch_models:
        ours, theirs = durations.get(name), durations.get(f"torch_{name}")
        if ours and theirs:
            results[f"{name}_over_torch_b{batch}_{precision}_time_ratio"] = _median_ratio(ours, theirs)


def _time_precision(args: argparse.Namespace, built: dict, torch_models: dict, precision: str,
                    rng: np.random.Generator, results: dict, errors: dict) -> None:
    """Every XLA setting and batch size of one precision, the models timed in turns."""
    import tensorflow as tf

    for xla in [{"off": False, "on": True}[value] for value in _split(args.xla)]:
        forwards = {
            name: tf.function(lambda clips, model=model: model(clips, training=False), jit_compile=xla)
            for name, model in built.items()
        }
        for batch in [int(size) for size in _split(args.batch_sizes)]:
            clips = tf.constant(rng.integers(0, 256, (batch, args.num_frames, args.input_size,
                                                      args.input_size, 3)).astype("float32"))
            case_forwards = dict(forwards)
            if torch_models and not xla:
                try:
                    case_forwards.update(_torch_forwards(torch_models, precision, clips))
                except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
                    errors[f"torch_b{batch}_{precision}"] = f"{type(error).__name__}: {error}"
            keys = {name: (f"{name}_b{batch}_{precision}" if name.startswith("torch_")
                           else _case_key(name, batch, xla, precision)) for name in case_forwards}
            durations = _time_in_turns(case_forwards, clips, args.num_warm_iter, args.num_bench_iter,
                                       errors, keys)
            _record_durations(durations, keys, batch, results)
            _record_ratios(durations, torch_models, batch, xla, precision, results)


def _record_targets(precisions: list[str], results: dict) -> None:
    for precision in precisions:
        ratio = results.get(f"selfy_over_tsm_r50_b1_xla0_{precision}_time_ratio")
        if ratio is not None:
            results[f"target_time_ratio_met_{precision}"] = ratio <= TARGET_RATIO
        selfy_ms = results.get(f"{_case_key('selfy_tsm_r50', 1, False, precision)}_infer_ms_per_clip")
        if selfy_ms is not None:
            results[f"target_selfy_tsm_r50_ms_met_{precision}"] = selfy_ms <= TARGET_SELFY_R50_MS
    results["target_time_ratio"] = TARGET_RATIO
    results["target_selfy_tsm_r50_ms_per_clip"] = TARGET_SELFY_R50_MS


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    limit_threads(args.threads)
    import keras

    models = _split(args.models)
    precisions = _split(args.precisions)
    torch_names = _split(args.torch_models)
    results = _environment(args, precisions)
    errors: dict[str, str] = {}
    rng = np.random.default_rng(0)
    gmacs: dict[str, float] = {}
    torch_models = {}
    if torch_names:
        try:
            torch_models = {name: model.eval() for name, model in torch_reference_models(
                torch_names, args.num_classes, args.num_frames, args.threads).items()}
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            errors["torch"] = f"{type(error).__name__}: {error}"
    for precision in precisions:
        try:
            gflops = matmul_gflops(precision, _MATMUL_SIZE)
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            errors[f"matmul_{precision}"] = f"{type(error).__name__}: {error}"
            continue
        results[f"matmul_{precision}_gflops"] = round(gflops, 1)
        built = _build_models(args, models, precision, gflops, gmacs, results, errors)
        _time_precision(args, built, torch_models, precision, rng, results, errors)
        built = None
        keras.utils.clear_session()
    _record_targets(precisions, results)
    results["load_average_1min_end"] = os.getloadavg()[0]
    if errors:
        results["error"] = errors
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
