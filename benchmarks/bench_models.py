"""Inference time per clip of the model zoo: TSN / TSM / SELFYNet at R18 and R50.

    python3 benchmarks/bench_models.py --quick
    python3 benchmarks/bench_models.py --results-file results.json

For each model, batch size and XLA setting, runs untimed warm-up calls
(tracing, XLA compilation), then a fixed number of timed calls of
`model(clips, training=False)` inside one `tf.function`, on random 0..255
clips of 8 x 224² frames. Prints ONE JSON object on stdout: the setup, the
milliseconds per clip of every case (`<model>_b<batch>_xla<0|1>_infer_ms_per_clip`),
the SELFY/TSM time ratios measured in this same run, and the targets
(selfy_tsm_r50 / tsm_r50 <= 1.12 and selfy_tsm_r50 <= 310 ms per clip at
batch 1, 2 threads). Logs go to stderr; a failing case records its error and
the sweep goes on.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time

from _common import limit_threads, write_results

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger("bench_models")

DEFAULT_MODELS = ("tsn_r18", "tsm_r18", "selfy_tsm_r18", "tsn_r50", "tsm_r50", "selfy_tsm_r50")
QUICK_MODELS = ("tsm_r50", "selfy_tsm_r50")
TARGET_RATIO = 1.12
TARGET_SELFY_R50_MS = 310.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--xla", default="off,on", help="XLA settings to run: off, on or off,on")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per clip")
    parser.add_argument("--input-size", type=int, default=224, help="frame height and width")
    parser.add_argument("--num-classes", type=int, default=174, help="classifier outputs")
    parser.add_argument("--threads", type=int, default=2, help="TF intra- and inter-op threads")
    parser.add_argument("--num-warm-iter", type=int, default=2, help="untimed warm-up calls")
    parser.add_argument("--num-bench-iter", type=int, default=5, help="timed calls per case")
    parser.add_argument("--quick", action="store_true",
                        help="only tsm_r50 and selfy_tsm_r50, batch 1, XLA off, 3 timed calls")
    parser.add_argument("--results-file", default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch_sizes, args.xla, args.num_bench_iter = ",".join(QUICK_MODELS), "1", "off", 3
    return args


def _case_key(model: str, batch: int, xla: bool) -> str:
    return f"{model}_b{batch}_xla{int(xla)}"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import numpy as np
    import tensorflow as tf

    limit_threads(args.threads)
    import keras

    from selfy_tf.models import count_macs, create_model

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    xla_settings = [{"off": False, "on": True}[value.strip()] for value in args.xla.split(",")]
    results: dict[str, object] = {
        "benchmark": "bench_models",
        "tf_version": tf.__version__,
        "keras_version": keras.__version__,
        "device": "cpu" if not tf.config.list_physical_devices("GPU") else "gpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": args.threads,
        "num_frames": args.num_frames,
        "input_size": args.input_size,
        "num_classes": args.num_classes,
        "dtype": "float32",
        "num_warm_iter": args.num_warm_iter,
        "num_bench_iter": args.num_bench_iter,
        "load_average_1min": os.getloadavg()[0],
    }
    errors: dict[str, str] = {}
    rng = np.random.default_rng(0)
    for name in models:
        try:
            model = create_model(name, num_classes=args.num_classes, num_frames=args.num_frames,
                                 input_size=args.input_size)
            results[f"{name}_gmacs"] = round(count_macs(model) / 1e9, 3)
            results[f"{name}_param_count_m"] = round(model.count_params() / 1e6, 3)
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            errors[name] = f"{type(error).__name__}: {error}"
            logger.error("%s: %s", name, errors[name])
            continue
        for xla in xla_settings:
            forward = tf.function(lambda clips, model=model: model(clips, training=False), jit_compile=xla)
            for batch in batch_sizes:
                key = _case_key(name, batch, xla)
                try:
                    clips = tf.constant(rng.integers(0, 256, (batch, args.num_frames, args.input_size,
                                                              args.input_size, 3)).astype("float32"))
                    for _ in range(args.num_warm_iter):
                        forward(clips).numpy()
                    durations = []
                    for _ in range(args.num_bench_iter):
                        start = time.perf_counter()
                        forward(clips).numpy()
                        durations.append(time.perf_counter() - start)
                    # The median resists load spikes on a shared machine.
                    ms_per_clip = 1000.0 * float(np.median(durations)) / batch
                    results[f"{key}_infer_mean_ms_per_clip"] = round(1000.0 * float(np.mean(durations)) / batch, 2)
                    results[f"{key}_infer_ms_per_clip"] = round(ms_per_clip, 2)
                    results[f"{key}_infer_clips_per_sec"] = round(1000.0 / ms_per_clip, 3)
                    logger.info("%s: %.1f ms per clip", key, ms_per_clip)
                except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
                    errors[key] = f"{type(error).__name__}: {error}"
                    logger.error("%s: %s", key, errors[key])
        keras.utils.clear_session()

    for depth in ("r18", "r50"):
        for batch in batch_sizes:
            for xla in xla_settings:
                selfy = results.get(f"{_case_key(f'selfy_tsm_{depth}', batch, xla)}_infer_ms_per_clip")
                tsm = results.get(f"{_case_key(f'tsm_{depth}', batch, xla)}_infer_ms_per_clip")
                if selfy and tsm:
                    results[f"selfy_over_tsm_{depth}_b{batch}_xla{int(xla)}_time_ratio"] = round(selfy / tsm, 4)
    headline = results.get("selfy_over_tsm_r50_b1_xla0_time_ratio")
    selfy_ms = results.get("selfy_tsm_r50_b1_xla0_infer_ms_per_clip")
    if headline is not None:
        results["selfy_over_tsm_r50_time_ratio"] = headline
        results["target_time_ratio"] = TARGET_RATIO
        results["target_time_ratio_met"] = headline <= TARGET_RATIO
    if selfy_ms is not None:
        results["target_selfy_tsm_r50_ms_per_clip"] = TARGET_SELFY_R50_MS
        results["target_selfy_tsm_r50_ms_met"] = selfy_ms <= TARGET_SELFY_R50_MS
    results["load_average_1min_end"] = os.getloadavg()[0]
    if errors:
        results["error"] = errors
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
