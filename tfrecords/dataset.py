"""`make_dataset`: the tf.data input pipeline over clip TFRecords.

Reader order: match files → shard files per input pipeline → shuffle files
(training) → interleave the shards → shuffle records (training) → decode →
sample/decode/augment with AUTOTUNE parallelism → batch → prefetch.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import tensorflow as tf

from selfy_tf import run_dir
from selfy_tf.eval_view import EvalView
from tfrecords import augment, features
from tfrecords import decoder as decoder_lib
from tfrecords import parser as parser_lib

logger = logging.getLogger(__name__)

# Records held for shuffling: a clip record of ~40 JPEG frames at 240x320 is
# ~0.6 MB, so 256 records cost ~150 MB; file shuffling and the interleave of
# shards add more mixing.
DEFAULT_SHUFFLE_BUFFER = 256


def match_files(file_pattern: "str | Sequence[str]") -> list[str]:
    """Sorted files matching a glob pattern or a list of patterns/files.

    Raises:
        ValueError: if nothing matches, naming the pattern.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted({path for pattern in patterns for path in tf.io.gfile.glob(str(pattern))})
    if not files:
        raise ValueError(
            f"`file_pattern` matches no file. Received: {file_pattern!r}. Expected e.g. "
            "'DIR/train-*.tfrecord'."
        )
    return files


def shard_files(files: Sequence[str], input_context: tf.distribute.InputContext | None) -> list[str]:
    """The files read by one input pipeline (every `num_input_pipelines`-th file).

    Raises:
        ValueError: fewer files than input pipelines (naming both counts).
    """
    if input_context is None:
        return list(files)
    return _pipeline_files(files, input_context.num_input_pipelines, input_context.input_pipeline_id)


def _pipeline_files(files: Sequence[str], pipelines: int, pipeline_id: int) -> list[str]:
    if pipelines <= 1:
        return list(files)
    if len(files) < pipelines:
        raise ValueError(
            f"{len(files)} TFRecord files cannot be shared among {pipelines} input "
            f"pipelines: each needs at least one file. Write at least {pipelines} shards "
            "(`selfy tfrecords build --shards N`)."
        )
    return list(files[pipeline_id::pipelines])


def _labels_beside(files: Sequence[str]) -> int | None:
    """Class count of the `labels.txt` next to the first shard, or None."""
    directory = os.path.dirname(files[0]) if files else ""
    if not os.path.isfile(os.path.join(directory, run_dir.LABELS_FILE)):
        return None
    return len(run_dir.read_labels(directory))


def check_label(label: tf.Tensor, num_classes: int, shard: tf.Tensor, record_index: tf.Tensor) -> tf.Tensor:
    """`label`, after checking that it lies in `[0, num_classes)`.

    A label outside the range would silently become an all-zero one-hot
    target (training) or the last class / an IndexError (evaluation), so the
    pipeline stops with `tf.errors.InvalidArgumentError` whose message names
    the shard, the record index (0-based, within the shard) and the label.
    """
    valid = tf.logical_and(label >= 0, label < num_classes)
    message = tf.strings.join(
        [
            "shard ", shard, " record ", tf.strings.as_string(record_index), ": label ",
            tf.strings.as_string(label),
            f" is outside [0, {num_classes}) (num_classes={num_classes}). Labels index "
            "the lines of labels.txt; rewrite the record with a label in that range.",
        ]
    )
    check = tf.debugging.Assert(valid, [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(label)


def _pipeline_layout(input_context: tf.distribute.InputContext | None) -> tuple[int, int, int]:
    """`(num_input_pipelines, input_pipeline_id, replicas_per_pipeline)`."""
    if input_context is None:
        return 1, 0, 1
    pipelines = max(1, int(input_context.num_input_pipelines))
    return pipelines, int(input_context.input_pipeline_id), max(1, int(input_context.num_replicas_in_sync) // pipelines)


def padded_eval_steps(
    file_pattern: "str | Sequence[str]",
    batch_size: int,
    num_input_pipelines: int = 1,
    num_replicas_in_sync: int = 1,
) -> int:
    """Steps of `make_dataset(training=False, pad_batches=True)`: each step
    takes one batch per replica, and every pipeline takes the same number.

    Args:
        file_pattern: the shards, as for `make_dataset`.
        batch_size: the global batch size.
        num_input_pipelines: input pipelines (workers) sharing the files.
        num_replicas_in_sync: replicas over all pipelines.

    Returns:
        `max over pipelines of ceil(clips of the pipeline / clips it feeds a
        step)`, at least 1.

    Raises:
        ValueError: as `match_files` and `shard_files`; a `batch_size` that
            the replicas do not divide.
    """
    from tfrecords.split import shard_record_counts

    files = match_files(file_pattern)
    if int(batch_size) % int(num_replicas_in_sync):
        raise ValueError(
            f"`batch_size`={batch_size} must be a multiple of the {num_replicas_in_sync} replicas in sync."
        )
    counts = dict(zip(files, shard_record_counts(files)))
    pipelines = int(num_input_pipelines)
    replicas_per_pipeline = max(1, int(num_replicas_in_sync) // pipelines)
    return _padded_steps(files, counts, int(batch_size) // int(num_replicas_in_sync), pipelines, replicas_per_pipeline)


def _padded_steps(
    files: Sequence[str], counts: Mapping[str, int], per_replica_batch: int, pipelines: int, replicas_per_pipeline: int
) -> int:
    clips_per_step = per_replica_batch * replicas_per_pipeline
    steps = 1
    for pipeline in range(pipelines):
        clips = sum(counts[path] for path in _pipeline_files(files, pipelines, pipeline))
        steps = max(steps, -(-clips // clips_per_step))
    return steps


def _padding(element_spec):
    """One padding element of `element_spec` (all zeros, empty strings)."""

    def zeros(spec):
        if spec.dtype == tf.string:
            return tf.fill(spec.shape, "")
        return tf.zeros(spec.shape, spec.dtype)

    return tf.nest.map_structure(zeros, element_spec)


def _read_indexed_shard(path: tf.Tensor) -> tf.data.Dataset:
    """`(serialized, shard path, record index)` for each record of one shard."""
    records = tf.data.TFRecordDataset(path).enumerate()
    return records.map(lambda index, serialized: (serialized, path, index))


def make_dataset(
    file_pattern: "str | Sequence[str]",
    *,
    training: bool,
    num_frames: int | None = None,
    batch_size: int,
    crop_size: int | None = None,
    eval_view: EvalView | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int | None = None,
    no_flip_classes: Sequence[int] = (),
    flip_label_map: Mapping[int, int] | None = None,
    feature_keys: "features.FeatureKeys | dict | None" = None,
    input_context: tf.distribute.InputContext | None = None,
    as_dict: bool = False,
    drop_remainder: bool | None = None,
    repeat: bool = False,
    cycle_length: int | None = None,
    scales: Sequence[float] = augment.MULTI_SCALE_CROP_SCALES,
    num_classes: int | None | str = "auto",
    pad_batches: bool = False,
    frame_stride: int = 0,
) -> tf.data.Dataset:
    """Builds the training or evaluation dataset of clip TFRecords.

    Args:
        file_pattern: glob pattern (or list of patterns/files) of the shards,
            e.g. `"DIR/train-*.tfrecord"`.
        training: training (random sampling, multi-scale crop, flip, shuffle)
            or evaluation (deterministic centre sampling and crops, file order).
        num_frames: frames per clip (TSN segments); default: the
            `eval_view`'s, else 8.
        batch_size: the **global** batch size. With `input_context` (inside
            `strategy.distribute_datasets_from_function`) each pipeline
            batches `input_context.get_per_replica_batch_size(batch_size)`
            clips, as tf.distribute expects; without it, `batch_size` clips.
        crop_size: side of the output frames; default: the `eval_view`'s,
            else 224.
        eval_view: how evaluation makes clips (`selfy_tf.eval_view.EvalView`:
            sampling, resize, `num_clips` x `num_crops` views); None:
            `EvalView(num_frames, crop_size)`, one centre crop of frames whose
            short side is `crop_size * 256 / 224`. Ignored in training.
        shuffle_buffer: record shuffle buffer (training).
        seed: makes the pipeline deterministic: the same seed gives the same
            batches (file order, record order, sampling and augmentation);
            every iteration (epoch) still differs from the previous one.
        no_flip_classes: classes never flipped in training.
        flip_label_map: `{class: class after flipping}` in training.
        feature_keys: SequenceExample keys (see `tfrecords.features.FeatureKeys`).
        input_context: given by `distribute_datasets_from_function`; files are
            sharded per input pipeline (needs at least one file per pipeline).
        as_dict: yield `{"frames", "label", "media_id"}` instead of a tuple.
        drop_remainder: drop the last partial batch (default: in training only).
        repeat: repeat the data forever (e.g. with `steps_per_epoch`).
        cycle_length: shards read at once (default: min(files, 16)).
        scales: multi-scale crop scales (training).
        num_classes: labels must lie in `[0, num_classes)`; a record outside
            stops the pipeline with an error naming its shard, record index
            and label. "auto": the class count of the `labels.txt` beside the
            first shard (no check without one); None: no check.
        frame_stride: training sampling: 0 for TSN segments, `k >= 1` for
            consecutive frames every `k` frames (see `Parser`).
        pad_batches: evaluation only: every clip exactly once over all input
            pipelines, in full batches. Each pipeline yields
            `padded_eval_steps(...)` steps of full batches (one per replica
            it feeds), the last ones filled with padding clips (zero frames,
            label 0), and each element gets a weight: `(frames, label,
            weight)`, float32 weight 1 for a clip and 0 for padding (a
            `"weight"` key with `as_dict`). Then every replica and worker
            runs the same number of steps, as `tf.distribute` needs.

    Returns:
        A dataset of `(frames, label)`: frames uint8 `[batch, num_frames,
        crop_size, crop_size, 3]`, label int32 `[batch]`. In evaluation with
        `num_clips * num_crops > 1` views, frames are uint8 `[batch, num_views,
        num_frames, crop_size, crop_size, 3]` (view `v = clip * num_crops +
        crop`); average the scores over the views axis. Its length (the
        `cardinality`) is known: the clips of the shards come from the split
        manifests beside them (shards without one are counted by reading
        them), so `model.fit` shows the step count; infinite with `repeat`.

    Raises:
        ValueError: no file matches, fewer files than input pipelines, or a bad
            argument (naming it).
    """
    from tfrecords.split import shard_record_counts

    if int(batch_size) < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}.")
    if pad_batches and (training or repeat):
        raise ValueError(
            "`pad_batches` pads evaluation batches; it needs training=False and repeat=False. "
            f"Received: training={training}, repeat={repeat}."
        )
    if eval_view is None:
        eval_view = EvalView(
            parser_lib.DEFAULT_NUM_FRAMES if num_frames is None else num_frames,
            parser_lib.DEFAULT_CROP_SIZE if crop_size is None else crop_size,
        )
    if training and eval_view.num_views != 1:
        logger.info("training: num_clips=%d and num_crops=%d are ignored", eval_view.num_clips, eval_view.num_crops)
        eval_view = eval_view.with_views(1, 1)
    clip_parser = parser_lib.Parser(
        num_frames=eval_view.num_frames if num_frames is None else num_frames,
        crop_size=eval_view.crop_size if crop_size is None else crop_size,
        eval_view=eval_view,
        no_flip_classes=no_flip_classes,
        flip_label_map=flip_label_map,
        scales=scales,
        frame_stride=frame_stride,
    )
    clip_decoder = decoder_lib.Decoder(feature_keys)
    all_files = match_files(file_pattern)
    if num_classes == "auto":
        num_classes = _labels_beside(all_files)
    files = shard_files(all_files, input_context)
    counts = dict(zip(all_files, shard_record_counts(all_files)))
    num_records = sum(counts[path] for path in files)
    num_pipelines, pipeline_id, replicas_per_pipeline = _pipeline_layout(input_context)
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(int(batch_size))
    deterministic = seed is not None or not training
    # Files are sharded before shuffling: unseeded shuffles differ per worker,
    # so shuffling first could give two workers the same file.
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        _read_indexed_shard,
        cycle_length=min(len(files), cycle_length or 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )
    # An interleave's length is unknown to tf.data; without it `fit` cannot
    # show the step count and warns that the input ran out of data.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_records))
    if training and shuffle_buffer > 1:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def decode(record):
        serialized, shard, record_index = record
        decoded = clip_decoder.decode(serialized)
        if num_classes is not None:
            label = check_label(decoded[decoder_lib.LABEL], int(num_classes), shard, record_index)
            decoded = {**decoded, decoder_lib.LABEL: label}
        return decoded

    def finish(decoded, frames, label):
        if as_dict:
            return {"frames": frames, "label": label, "media_id": decoded[decoder_lib.MEDIA_ID]}
        return frames, label

    if training:
        element_seed = None if seed is None else int(seed) * 1009 + pipeline_id
        seeds = tf.data.Dataset.random(seed=element_seed, rerandomize_each_iteration=True).batch(
            2, drop_remainder=True
        )
        dataset = tf.data.Dataset.zip(dataset, seeds)
        parse = clip_parser.parse_fn(True)

        def process(record, element_seed_pair):
            decoded = decode(record)
            return finish(decoded, *parse(decoded, element_seed_pair))

    else:
        parse = clip_parser.parse_fn(False)

        def process(*record):
            decoded = decode(record)
            return finish(decoded, *parse(decoded))

    dataset = dataset.map(process, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if pad_batches:
        steps = _padded_steps(all_files, counts, int(batch_size), num_pipelines, replicas_per_pipeline)
        padded_size = steps * replicas_per_pipeline * int(batch_size)

        def with_weight(*element):
            weight = tf.constant(1.0, tf.float32)
            if as_dict:
                return {**element[0], "weight": weight}
            return (*element, weight)

        dataset = dataset.map(with_weight)
        padding = _padding(dataset.element_spec)
        dataset = dataset.concatenate(
            tf.data.Dataset.from_tensors(padding).repeat(padded_size - num_records)
        )
        drop_remainder = True
    if drop_remainder is None:
        drop_remainder = training
    dataset = dataset.batch(int(batch_size), drop_remainder=bool(drop_remainder))
    return dataset.prefetch(tf.data.AUTOTUNE)
