"""Throughput of the TFRecord clip input pipeline (training and evaluation).

    python3 benchmarks/bench_input.py --threads 2 --batches 20

Builds a synthetic dataset of 240x320 JPEG frames in a temporary directory
(or reuses `--data-dir`), then measures clips/s of `tfrecords.make_dataset`
for training (TSN sampling, multi-scale crop decoded from the JPEGs, resize
to 224, flip) and evaluation (centre sampling, full decode, centre crop), and
the single-thread cost of each stage per clip: read (TFRecord), parse
(SequenceExample), decode (the 8 selected JPEGs, crop window only as in
training) and augment (resize + flip). Prints one JSON line on stdout; logs go
to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np
from _common import limit_threads, write_results

logger = logging.getLogger("bench_input")


def _synthetic_clips(num_clips: int, num_frames: int, height: int, width: int, seed: int = 0):
    """Smooth random frames (JPEG sizes close to real video frames), drifting over time."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for number in range(num_clips):
        coarse = rng.integers(0, 255, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        base = np.asarray(
            Image.fromarray(coarse).resize((width + 64, height + 32), Image.Resampling.BICUBIC)
        )
        frames = np.stack(
            [base[index : index + height, 2 * index : 2 * index + width] for index in range(num_frames)]
        )
        noise = rng.integers(0, 12, frames.shape, dtype=np.uint8)
        yield np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8), number % 10, f"clip{number}"


def _time_batches(dataset, warmup: int, batches: int) -> float:
    """Seconds for `batches` batches after `warmup` untimed ones."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start


def _stage_times(pattern: str, args, tf) -> dict:
    """Single-thread milliseconds per clip of each stage (cumulative pipelines, differenced)."""
    from selfy_tf import sampling
    from tfrecords import augment, decoder

    clip_decoder = decoder.Decoder()
    crop = args.crop_size

    def read():
        return tf.data.TFRecordDataset(tf.io.gfile.glob(pattern))

    def parse(serialized):
        return clip_decoder.decode(serialized)

    def select_and_decode(decoded):
        encoded = decoded["encoded_frames"]
        seed = tf.constant([1, 2])
        indices = sampling.sample_train_indices_tf(tf.size(encoded), args.num_frames, seed)
        selected = tf.gather(encoded, indices)
        shape = tf.io.extract_jpeg_shape(selected[0])
        window = augment.multi_scale_crop_window(shape[0], shape[1], crop, seed)
        frames = tf.stack(
            [tf.io.decode_and_crop_jpeg(selected[i], window, channels=3) for i in range(args.num_frames)]
        )
        return frames, decoded["label"]

    def augment_frames(frames, label):
        frames, label = augment.random_flip(frames, label, tf.constant([3, 4]))
        return augment.resize_frames(frames, [crop, crop]), label

    stages = [
        ("read", lambda dataset: dataset),
        ("parse", lambda dataset: dataset.map(parse)),
        ("decode", lambda dataset: dataset.map(select_and_decode)),
        ("augment", lambda dataset: dataset.map(augment_frames)),
    ]
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.autotune.enabled = False
    options.experimental_optimization.map_parallelization = False
    results, previous, dataset = {}, 0.0, read()
    for name, add_stage in stages:
        dataset = add_stage(dataset)
        timed = dataset.with_options(options).repeat()
        count = args.stage_clips
        seconds = _time_batches(timed, 4, count)
        cumulative = 1000.0 * seconds / count
        results[f"stage_{name}_ms_per_clip"] = round(cumulative - previous, 3)
        previous = cumulative
    return results


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--data-dir", default=None, help="reuse/create the synthetic dataset here")
    parser.add_argument("--num-clips", type=int, default=64, help="clips in the synthetic dataset")
    parser.add_argument("--stored-frames", type=int, default=24, help="frames stored per clip")
    parser.add_argument("--shards", type=int, default=4, help="shard files")
    parser.add_argument("--num-frames", type=int, default=8, help="frames per sampled clip")
    parser.add_argument("--crop-size", type=int, default=224, help="output side")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    parser.add_argument("--warmup-batches", type=int, default=3, help="untimed batches")
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--stage-clips", type=int, default=40, help="clips timed per stage")
    parser.add_argument("--threads", type=int, default=2, help="TF and tf.data threads")
    parser.add_argument("--results-file", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def _environment(args: argparse.Namespace) -> dict:
    """What the figures depend on: TensorFlow, threads, the clips' shapes and the dataset's size."""
    import tensorflow as tf

    return {
        "benchmark": "input_pipeline",
        "tf_version": tf.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "batch_size": args.batch_size,
        "num_frames": args.num_frames,
        "crop_size": args.crop_size,
        "stored_frame_size": "240x320",
        "stored_frames_per_clip": args.stored_frames,
        "num_clips": args.num_clips,
        "num_shards": args.shards,
        "timed_batches": args.batches,
        "note": "shared machine: other processes may lower these figures",
    }


def _write_dataset(data_dir: str, pattern: str, args: argparse.Namespace, results: dict) -> None:
    """Writes the synthetic JPEG shards unless `pattern` matches some already; records their size."""
    import tensorflow as tf

    import tfrecords

    if not tf.io.gfile.glob(pattern):
        start = time.perf_counter()
        tfrecords.write_split(
            data_dir, "train",
            _synthetic_clips(args.num_clips, args.stored_frames, 240, 320),
            [f"class{index}" for index in range(10)], num_shards=args.shards,
        )
        logger.info("wrote the synthetic dataset in %.1f s", time.perf_counter() - start)
    files = tf.io.gfile.glob(pattern)
    results["dataset_mb"] = round(sum(os.path.getsize(path) for path in files) / 2**20, 2)
    results["jpeg_kb_per_frame"] = round(
        results["dataset_mb"] * 1024 / (args.num_clips * args.stored_frames), 2
    )


def _time_pipelines(pattern: str, args: argparse.Namespace, results: dict) -> None:
    """Clips per second of the training and the evaluation pipeline."""
    import tensorflow as tf

    import tfrecords
    from selfy_tf.eval_view import EvalView

    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    for phase, training in (("train", True), ("eval", False)):
        try:
            # Evaluation: the paper presets' view, frames resized to 240x320.
            view = EvalView(args.num_frames, args.crop_size, eval_size=(240, 320))
            dataset = tfrecords.make_dataset(
                pattern, training=training, batch_size=args.batch_size, eval_view=view, repeat=True,
                shuffle_buffer=64,
            ).with_options(options)
            seconds = _time_batches(dataset, args.warmup_batches, args.batches)
            results[f"{phase}_clips_per_sec"] = round(args.batch_size * args.batches / seconds, 1)
            results[f"{phase}_batch_time_ms"] = round(1000.0 * seconds / args.batches, 2)
            logger.info("%s: %.1f clips/s", phase, results[f"{phase}_clips_per_sec"])
        except Exception as error:  # noqa: BLE001 - record and go on
            results[f"{phase}_error"] = f"{type(error).__name__}: {error}"


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")

    import tensorflow as tf

    limit_threads(args.threads)
    results = _environment(args)
    temporary = None
    data_dir = args.data_dir
    if data_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_input_")
        data_dir = temporary.name
    pattern = os.path.join(data_dir, "train-*.tfrecord")
    try:
        _write_dataset(data_dir, pattern, args, results)
        _time_pipelines(pattern, args, results)
        try:
            results.update(_stage_times(pattern, args, tf))
        except Exception as error:  # noqa: BLE001
            results["stage_error"] = f"{type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001
        results["error"] = f"{type(error).__name__}: {error}"
    finally:
        if temporary is not None:
            temporary.cleanup()
    write_results(results, args.results_file)
    return 0 if "error" not in results else 1


if __name__ == "__main__":
    sys.exit(main())
