"""Cost of a stream step against the offline clip, in Keras and LiteRT, on CPU.

    python benchmarks/bench_streaming.py --models selfy_tsm_r18.tiny,selfy_tsm_r50 \\
        --threads 2 --results-file bench_streaming.json

For each causal model (`create_model(name, causal=True)`; `selfy_tsm_r50` at
8 frames of 224x224, the `.tiny` config at its own size; random weights,
batch 1), times in the same run: the offline clip in Keras (a
`tf.function` of the model), one stream step in Keras (a `tf.function` of
`selfy_tf.streaming.stream_model`), the clip and the stream step in LiteRT
float32, and the stream step in LiteRT int8 (calibrated on
`--calibration-clips` random clips). The ratio the stream is judged by is
`<model>_<runtime>_step_vs_clip_per_frame`: the step time over (the clip time
/ num_frames); 1.0 means a stream costs per frame what the clip model costs
per frame. Warm-up runs are not timed; then `--iterations` timed rounds,
each one clip call then `num_frames` step calls, so that the load of a
shared machine drifts over both alike (medians). Prints ONE JSON line to stdout; a failing case records
`<model>_<case>_error` and the sweep goes on. Logs go to stderr.

`<model>_keras_api_step_ms` times `selfy_tf.streaming.step` itself (NumPy in
and out, its checks included: what `selfy predict --stream` and
`serving.stream` call), and `<model>_keras_eager_step_ms` the stream model
called eagerly, as `step` did before it used the compiled predict function.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

import numpy as np
from _common import limit_threads, write_results

logger = logging.getLogger("bench_streaming")


def _timed_pair(clip_call, step_call, num_frames: int, warmup: int, iterations: int) -> tuple[float, float]:
    """Median clip time and median step time (ms), measured in alternation.

    Each round times one clip call, then `num_frames` step calls (a clip's
    worth of frames), so that load drifts on a shared machine hit both alike.
    """
    for _ in range(warmup):
        clip_call()
        step_call()
    clip_times, step_times = [], []
    for _ in range(iterations):
        start = time.perf_counter()
        clip_call()
        clip_times.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        for _ in range(num_frames):
            step_call()
        step_times.append((time.perf_counter() - start) * 1e3 / num_frames)
    return float(np.median(clip_times)), float(np.median(step_times))


def _timed(function, warmup: int, iterations: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _bench_model(name: str, args: argparse.Namespace, results: dict) -> None:
    import tensorflow as tf

    from selfy_tf import streaming
    from selfy_tf.models import create_model
    from serving import stream as stream_lib
    from serving import tflite
    from serving.tflite_runtime import TFLiteClassifier, TFLiteStream

    # A registry config (`arch.tag`) keeps its own frames and size.
    arguments = {"num_classes": 10} if "." in name else {"num_classes": 174, "num_frames": 8, "input_size": 224}
    model = create_model(name, causal=True, **arguments)
    _, num_frames, size, _, _ = model.inputs[0].shape
    key = name.replace(".", "_")
    results[f"{key}_num_frames"] = int(num_frames)
    results[f"{key}_input_size"] = int(size)
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (1, num_frames, size, size, 3), dtype=np.uint8)
    stream = streaming.stream_model(model)
    states = {name: tf.constant(value) for name, value in streaming.initial_states(stream, 1).items()}
    frame = tf.constant(clip[:, 0])
    clip_function = tf.function(lambda frames: model(frames, training=False))
    step_function = tf.function(lambda inputs: stream(inputs, training=False))
    clip_tensor = tf.constant(clip.astype(np.float32))

    def record(runtime: str, make_calls) -> None:
        try:
            clip_call, step_call = make_calls()
            clip_ms, step_ms = _timed_pair(clip_call, step_call, num_frames, args.warmup, args.iterations)
            results[f"{key}_{runtime}_clip_ms"] = clip_ms
            results[f"{key}_{runtime}_step_ms"] = step_ms
        except Exception as error:  # noqa: BLE001 - a failing case is recorded, the sweep goes on
            results[f"{key}_{runtime}_error"] = repr(error)

    record("keras", lambda: (
        lambda: clip_function(clip_tensor), lambda: step_function({"frame": frame, **states})
    ))

    numpy_states = streaming.initial_states(stream, 1)
    for case, call in (
        ("keras_api_step_ms", lambda: streaming.step(stream, clip[:, 0], numpy_states)),
        ("keras_eager_step_ms", lambda: stream({"frame": clip[:, 0], **numpy_states}, training=False)),
    ):
        try:
            results[f"{key}_{case}"] = _timed(call, args.warmup, args.iterations)
        except Exception as error:  # noqa: BLE001 - a failing case is recorded, the sweep goes on
            results[f"{key}_{case.removesuffix('_ms')}_error"] = repr(error)

    def litert_calls():
        classifier = TFLiteClassifier(tflite.convert_model(model), num_threads=args.threads)
        fp32_stream = TFLiteStream(stream_lib.convert_stream_model(model), num_threads=args.threads)
        return (lambda: classifier.predict(clip)), (lambda: fp32_stream.step(clip[0, 0]))

    record("litert_fp32", litert_calls)
    try:
        calibration = [rng.integers(0, 256, (1, num_frames, size, size, 3), dtype=np.uint8)
                       for _ in range(args.calibration_clips)]
        int8_stream = TFLiteStream(
            stream_lib.convert_stream_model(model, "int8", calibration), num_threads=args.threads
        )
        results[f"{key}_litert_int8_step_ms"] = _timed(
            lambda: int8_stream.step(clip[0, 0]), args.warmup, args.iterations
        )
    except Exception as error:  # noqa: BLE001
        results[f"{key}_litert_int8_error"] = repr(error)
    for runtime in ("keras", "litert_fp32"):
        clip_ms, step_ms = results.get(f"{key}_{runtime}_clip_ms"), results.get(f"{key}_{runtime}_step_ms")
        if clip_ms and step_ms:
            results[f"{key}_{runtime}_step_vs_clip_per_frame"] = step_ms / (clip_ms / num_frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="selfy_tsm_r18.tiny,selfy_tsm_r50")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--calibration-clips", type=int, default=2)
    parser.add_argument("--results-file", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    limit_threads(args.threads)
    import tensorflow as tf

    results = {
        "tf_version": tf.__version__,
        "threads": args.threads,
        "iterations": args.iterations,
        "machine": platform.machine(),
        "batch_size": 1,
    }
    for name in args.models.split(","):
        logger.info("benchmarking %s", name)
        _bench_model(name, args, results)
    write_results(results, args.results_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
