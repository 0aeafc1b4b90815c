"""Writing clips to sharded TFRecord files: atomic, resumable, with a manifest.

Layout of a converted split in `out_dir`:

- `<split>-00000-of-000NN.tfrecord`: the shards; clip `i` of the listing goes
  to shard `i * NN // listed` (contiguous blocks, so the assignment depends
  only on the listing and the shard count);
- `labels.txt`: one class name per line, line i = class index i, the same for
  every split;
- `<split>.manifest.json`: counts, failures, per-class counts, frame statistics;
- `.<split>-results/<shard>.json`: what each finished shard holds, so a
  resumed conversion can still write the full manifest.

A shard is written under a temporary name and renamed when complete (its
result file is renamed first): a shard file that exists is complete and is
never rewritten. Re-running the same conversion after an interruption (even
`kill -9`) writes only the missing shards; conversion options and the listing
are fingerprinted so a re-run with different inputs is refused instead of
mixing two datasets, and each result file keeps the settings so the refusal
names what changed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import concurrent.futures.process
import dataclasses
import glob
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
import threading
from typing import Iterable, Iterator, Sequence

import numpy as np

from selfy_tf import run_dir
from selfy_tf.files import atomic_path, atomic_write_text, temporary_pattern
from tfrecords import features, sources
from tfrecords import split as split_lib
from tfrecords.video import VideoDecodeError

logger = logging.getLogger(__name__)

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclasses.dataclass
class ClipResult:
    """A converted clip (`encoded` set) or a failure (`failure` set)."""

    index: int
    source: str
    media_id: str
    label_index: int
    encoded: list[bytes] | None = None
    num_frames: int = 0
    height: int = 0
    width: int = 0
    failure: str | None = None


def shard_name(split: str, shard_index: int, num_shards: int) -> str:
    """`<split>-00000-of-00004.tfrecord`."""
    return f"{split}-{shard_index:05d}-of-{num_shards:05d}.tfrecord"


def shard_bounds(num_clips: int, num_shards: int) -> list[tuple[int, int]]:
    """`[start, end)` listing positions of each shard (contiguous, sizes differ by ≤ 1)."""
    return [
        (index * num_clips // num_shards, (index + 1) * num_clips // num_shards)
        for index in range(num_shards)
    ]


def convert_clip(
    index: int,
    clip: sources.ClipSource,
    options: sources.LoadOptions,
    jpeg_quality: int = features.DEFAULT_JPEG_QUALITY,
) -> ClipResult:
    """Reads and JPEG-encodes one clip; a bad input becomes a failure, never an error."""
    result = ClipResult(index, clip.source, clip.media_id, clip.label_index)
    try:
        frames = sources.load_clip(clip, options)
        result.encoded = features.encode_frames(frames, jpeg_quality)
        result.num_frames, result.height, result.width = (int(value) for value in frames.shape[:3])
    except VideoDecodeError as error:
        result.failure = str(error)
    except Exception as error:  # noqa: BLE001 - any bad input must not stop the run
        result.failure = f"{type(error).__name__}: {error}"
    return result


def _convert_task(task: tuple) -> ClipResult:
    return convert_clip(*task)


def _crashed_clip(task: tuple) -> ClipResult:
    position, clip = task[0], task[1]
    return ClipResult(
        position, clip.source, clip.media_id, clip.label_index,
        failure="the decoder crashed (its worker process died)",
    )


def _exit_when_parent_dies() -> None:
    """Worker initializer: ends this worker when the converting process dies.

    A worker waits for tasks on a queue whose write end it holds itself, so
    it never sees the end of input when its parent is killed (`kill -9`
    leaves no time for the executor's shutdown): it would wait forever.
    A daemon thread waits on the parent's sentinel and exits instead.
    """
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="selfy-parent-watch", daemon=True).start()


def _new_executor(workers: int) -> concurrent.futures.ProcessPoolExecutor:
    # "spawn": workers import only the TensorFlow-free modules they need,
    # instead of forking a process that may hold TensorFlow threads.
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_when_parent_dies,
    )


def _parallel_map(function, tasks: Sequence, workers: int, on_crash) -> Iterator:
    """Ordered parallel map over processes that survives crashing workers.

    A worker that dies (e.g. a decoder segfault on a malformed video) breaks
    the pool and every task in flight. The first unfinished task is then run
    alone in a fresh process: if that crashes too, `on_crash(task)` is its
    result; either way the remaining tasks go on in a new pool.
    """
    start = 0
    while start < len(tasks):
        executor = _new_executor(workers)
        try:
            for result in _ordered_map(executor, function, tasks[start:], window=4 * workers):
                start += 1
                yield result
        except concurrent.futures.process.BrokenProcessPool:
            logger.warning("a worker process died: running the next unfinished task alone")
            solo = _new_executor(1)
            try:
                result = solo.submit(function, tasks[start]).result()
            except concurrent.futures.process.BrokenProcessPool:
                result = on_crash(tasks[start])
            finally:
                solo.shutdown(wait=True, cancel_futures=True)
            start += 1
            yield result
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _ordered_map(executor, function, tasks: Sequence, window: int) -> Iterator:
    """`executor.map` in order, with at most `window` tasks in flight, so that
    one slow clip cannot make finished results pile up in memory."""
    pending: collections.deque = collections.deque()
    remaining = iter(tasks)
    for task in itertools.islice(remaining, window):
        pending.append(executor.submit(function, task))
    while pending:
        result = pending.popleft().result()
        for task in itertools.islice(remaining, 1):
            pending.append(executor.submit(function, task))
        yield result


def _shown(value: object) -> str:
    """A setting as a user would write it on the command line."""
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return "x".join(str(item) for item in value)
    return str(value)


def describe_settings_change(before: dict, now: dict) -> str:
    """What differs between the settings of two conversions, in `selfy tfrecords build` terms.

    Args:
        before, now: settings as `convert_split` records them in each shard's
            result file (`options`, `jpeg_quality`, `num_clips`,
            `clips_digest`, `num_labels`, `labels_digest`).

    Returns:
        e.g. "--resize-short 256 before, 320 now; other clips listed (75 before, 80 now)".
    """
    changes = []
    options_before, options_now = before.get("options", {}), now.get("options", {})
    for field in sorted(set(options_before) | set(options_now)):
        if options_before.get(field) != options_now.get(field):
            flag = "--" + field.replace("_", "-")
            changes.append(f"{flag} {_shown(options_before.get(field))} before, {_shown(options_now.get(field))} now")
    if before.get("jpeg_quality") != now.get("jpeg_quality"):
        changes.append(f"--jpeg-quality {before.get('jpeg_quality')} before, {now.get('jpeg_quality')} now")
    if before.get("labels_digest") != now.get("labels_digest"):
        changes.append(f"another class list ({before.get('num_labels')} classes before, {now.get('num_labels')} now)")
    if before.get("clips_digest") != now.get("clips_digest"):
        changes.append(
            f"other clips listed ({before.get('num_clips')} before, {now.get('num_clips')} now: the source "
            "videos, index files or --validation-fraction changed)"
        )
    return "; ".join(changes)


class _SplitWriter:
    """Writes the shards of one split atomically and records what each holds.

    Args:
        out_dir: the dataset directory.
        split: the split's name.
        num_shards: its shard count.
        fingerprint: identifies the conversion; a shard of another one is refused.
        settings: the conversion's settings (JSON), kept with each shard so a
            refusal can name what changed; None for in-memory splits.
    """

    def __init__(
        self, out_dir: str, split: str, num_shards: int, fingerprint: str, settings: dict | None = None
    ) -> None:
        if not _SPLIT_NAME.match(split or ""):
            raise ValueError(
                f"`split` must be letters, digits, '_' or '.'. Received: {split!r}. Try 'train'."
            )
        if int(num_shards) < 1:
            raise ValueError(f"`num_shards` must be at least 1. Received: {num_shards}.")
        self.out_dir = out_dir
        self.split = split
        self.num_shards = int(num_shards)
        self.fingerprint = fingerprint
        # Through JSON, as read back from a result file (tuples become lists).
        self.settings = json.loads(json.dumps(settings)) if settings is not None else None
        self.results_dir = os.path.join(out_dir, f".{split}-results")

    def shard_path(self, shard_index: int) -> str:
        return os.path.join(self.out_dir, shard_name(self.split, shard_index, self.num_shards))

    def result_path(self, shard_index: int) -> str:
        return os.path.join(
            self.results_dir, f"{shard_index:05d}-of-{self.num_shards:05d}.json"
        )

    def remove_existing(self) -> None:
        """Deletes this split's shards, results and manifest (for a fresh write)."""
        for path in glob.glob(os.path.join(self.out_dir, f"{self.split}-*-of-*.tfrecord*")):
            os.remove(path)
        shutil.rmtree(self.results_dir, ignore_errors=True)
        manifest = split_lib.manifest_path(self.out_dir, self.split)
        if os.path.exists(manifest):
            os.remove(manifest)

    def completed_shards(self) -> set[int]:
        """Shards already written by this same conversion.

        Raises:
            ValueError: if the directory holds shards of another conversion.
        """
        os.makedirs(self.out_dir, exist_ok=True)
        for path in glob.glob(temporary_pattern(os.path.join(self.out_dir, f"{self.split}-*-of-*.tfrecord"))):
            os.remove(path)  # left by an interrupted run; never a complete shard
        existing = glob.glob(os.path.join(self.out_dir, f"{self.split}-*-of-*.tfrecord"))
        other = sorted(
            os.path.basename(path)
            for path in existing
            if not path.endswith(f"-of-{self.num_shards:05d}.tfrecord")
        )
        if other:
            raise ValueError(
                f"{self.out_dir} already holds shards of split {self.split!r} with another "
                f"shard count ({other[0]}, ...), not {self.num_shards}. Pass --overwrite to "
                "replace them, or choose another output directory."
            )
        done = set()
        for shard_index in range(self.num_shards):
            if not os.path.exists(self.shard_path(shard_index)):
                continue
            try:
                with open(self.result_path(shard_index), encoding="utf-8") as handle:
                    record = json.load(handle)
            except (OSError, json.JSONDecodeError):
                logger.warning("%s has no result file: rewriting it", self.shard_path(shard_index))
                continue
            if record.get("fingerprint") != self.fingerprint:
                change = ""
                if record.get("settings") and self.settings:
                    change = describe_settings_change(record["settings"], self.settings)
                what = f": {change}" if change else " with other inputs or options"
                raise ValueError(
                    f"{self.shard_path(shard_index)} was written by a conversion{what}. Pass "
                    "--overwrite to replace the split, run with the earlier settings to resume "
                    "it, or choose another output directory."
                )
            done.add(shard_index)
        return done

    def write_shard(
        self,
        shard_index: int,
        results: Iterable[ClipResult],
        feature_keys: features.FeatureKeys | None = None,
        labels: Sequence[str] = (),
    ) -> dict:
        """Writes one shard from `results` (in order), then commits it atomically."""
        import tensorflow as tf

        path = self.shard_path(shard_index)
        record = {
            "fingerprint": self.fingerprint,
            "settings": self.settings,
            "file": os.path.basename(path),
            "clips": [],
            "failures": [],
        }
        # The shard's results are written before the shard itself appears.
        with atomic_path(path) as temporary:
            with tf.io.TFRecordWriter(temporary) as writer:
                for result in results:
                    if result.failure is not None:
                        record["failures"].append(
                            {
                                "index": result.index,
                                "source": result.source,
                                "reason": result.failure,
                            }
                        )
                        continue
                    label_text = labels[result.label_index] if labels else ""
                    writer.write(
                        features.encode_clip(
                            result.encoded,
                            result.label_index,
                            label_text,
                            result.media_id,
                            feature_keys=feature_keys,
                        )
                    )
                    record["clips"].append(
                        {
                            "index": result.index,
                            "media_id": result.media_id,
                            "label_index": result.label_index,
                            "num_frames": result.num_frames,
                            "height": result.height,
                            "width": result.width,
                        }
                    )
            atomic_write_text(self.result_path(shard_index), json.dumps(record))
        _commit_hook(path)
        return record

    def read_results(self) -> list[dict]:
        records = []
        for shard_index in range(self.num_shards):
            with open(self.result_path(shard_index), encoding="utf-8") as handle:
                records.append(json.load(handle))
        return records


def _commit_hook(path: str) -> None:
    """Called after each shard is committed (a seam for interruption tests)."""
    logger.debug("committed %s", path)


def _statistics(values: Sequence[int], with_total: bool = False) -> dict:
    """min / max / mean of `values`, and their sum when it means something (frames)."""
    array = np.asarray(values, dtype=np.int64)
    statistics = {
        "min": int(array.min()) if array.size else 0,
        "max": int(array.max()) if array.size else 0,
        "mean": round(float(array.mean()), 3) if array.size else 0.0,
    }
    if with_total:
        statistics["total"] = int(array.sum())
    return statistics


def _write_manifest(
    split_writer: _SplitWriter, labels: Sequence[str], listed: int, extra: dict
) -> dict:
    records = split_writer.read_results()
    clips = [clip for record in records for clip in record["clips"]]
    failures = sorted(
        (failure for record in records for failure in record["failures"]),
        key=lambda failure: failure["index"],
    )
    per_class = {name: 0 for name in labels}
    for clip in clips:
        per_class[labels[clip["label_index"]]] += 1
    manifest = {
        "split": split_writer.split,
        "listed": listed,
        "converted": len(clips),
        "failed": len(failures),
        "failures": [{"source": item["source"], "reason": item["reason"]} for item in failures],
        "num_classes": len(labels),
        "per_class": per_class,
        "frames": _statistics([clip["num_frames"] for clip in clips], with_total=True),
        "height": _statistics([clip["height"] for clip in clips]),
        "width": _statistics([clip["width"] for clip in clips]),
        "num_shards": split_writer.num_shards,
        "shards": [
            {"file": record["file"], "clips": len(record["clips"])} for record in records
        ],
        "fingerprint": split_writer.fingerprint,
        **extra,
    }
    if manifest["converted"] + manifest["failed"] != listed:
        raise RuntimeError(
            f"internal error: converted {manifest['converted']} + failed {manifest['failed']} "
            f"!= listed {listed}"
        )
    path = split_lib.manifest_path(split_writer.out_dir, split_writer.split)
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return manifest


def _fingerprint(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def convert_split(
    out_dir: str,
    split: str,
    listing: sources.Listing,
    *,
    options: sources.LoadOptions | None = None,
    num_shards: int = 1,
    workers: int | None = None,
    jpeg_quality: int = features.DEFAULT_JPEG_QUALITY,
    overwrite: bool = False,
    progress: bool | None = None,
    extra_manifest: dict | None = None,
) -> dict:
    """Converts the clips of `listing` into sharded TFRecords (resumable).

    Args:
        out_dir: output directory (created).
        split: split name, e.g. `"train"`, `"validation"`.
        listing: classes and clips, from `tfrecords.sources.list_<format>`.
        options: how frames are read and resized.
        num_shards: number of shard files.
        workers: parallel processes (default: all cores); 1 converts in-process.
        jpeg_quality: JPEG quality of the stored frames.
        overwrite: delete this split's existing shards first instead of resuming.
        progress: show a tqdm bar on stderr (default: when stderr is a TTY;
            otherwise one log line per shard).
        extra_manifest: extra entries for the manifest (e.g. the source format).

    Returns:
        The manifest dict (also written to `out_dir/<split>.manifest.json`).

    Raises:
        ValueError: nothing listed, class list differing from `labels.txt`, or
            shards of another conversion in `out_dir`.
    """
    options = options or sources.LoadOptions()
    workers = _check_conversion(listing, split, jpeg_quality, workers)
    jpeg_quality = int(jpeg_quality)
    fingerprint, settings = _conversion_fingerprint(listing, options, jpeg_quality, num_shards)
    split_writer = _start_split(out_dir, split, num_shards, fingerprint, settings, listing.labels, overwrite)
    pending = _pending_shards(split_writer)
    _convert_shards(split_writer, pending, listing, options, jpeg_quality, workers, progress)
    return _write_manifest(
        split_writer,
        listing.labels,
        len(listing.clips),
        {"options": dataclasses.asdict(options), "jpeg_quality": jpeg_quality,
         **(extra_manifest or {})},
    )


def _check_conversion(listing: sources.Listing, split: str, jpeg_quality: int, workers: int | None) -> int:
    """Checks the arguments of `convert_split`; returns the number of worker processes."""
    if not listing.clips:
        raise ValueError(f"no clips listed for split {split!r}: check the index files.")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"`jpeg_quality` must be in [1, 100]. Received: {jpeg_quality}.")
    workers = int(workers or os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"`workers` must be at least 1. Received: {workers}.")
    return workers


def _conversion_fingerprint(
    listing: sources.Listing, options: sources.LoadOptions, jpeg_quality: int, num_shards: int
) -> tuple[str, dict]:
    """The fingerprint of a conversion (what a resumed run must repeat) and the settings it records."""
    listed_clips = [dataclasses.astuple(clip)[1:] for clip in listing.clips]
    fingerprint = _fingerprint(
        {
            "clips": listed_clips,
            "labels": listing.labels,
            "options": dataclasses.asdict(options),
            "jpeg_quality": jpeg_quality,
            "num_shards": int(num_shards),
        }
    )
    settings = {
        "options": dataclasses.asdict(options),
        "jpeg_quality": jpeg_quality,
        "num_clips": len(listing.clips),
        "clips_digest": _fingerprint(listed_clips),
        "num_labels": len(listing.labels),
        "labels_digest": _fingerprint(listing.labels),
    }
    return fingerprint, settings


def _start_split(
    out_dir: str,
    split: str,
    num_shards: int,
    fingerprint: str,
    settings: dict,
    labels: Sequence[str],
    overwrite: bool,
) -> _SplitWriter:
    """The split's writer, with its folder made, old shards removed if `overwrite`, and `labels.txt` written."""
    split_writer = _SplitWriter(out_dir, split, num_shards, fingerprint, settings)
    os.makedirs(out_dir, exist_ok=True)
    if overwrite:
        split_writer.remove_existing()
    run_dir.write_labels(split_lib.labels_path(out_dir), labels, keep_existing=True)
    return split_writer


def _pending_shards(split_writer: _SplitWriter) -> list[int]:
    """The shards not written yet (all but those a previous run completed)."""
    done = split_writer.completed_shards()
    if done:
        logger.info(
            "%s: resuming, %d of %d shards already complete",
            split_writer.split, len(done), split_writer.num_shards,
        )
    return [index for index in range(split_writer.num_shards) if index not in done]


def _convert_shards(
    split_writer: _SplitWriter,
    pending: list[int],
    listing: sources.Listing,
    options: sources.LoadOptions,
    jpeg_quality: int,
    workers: int,
    progress: bool | None,
) -> None:
    """Converts the clips of the `pending` shards (in `workers` processes) and writes those shards."""
    from tqdm import tqdm

    clips, split = listing.clips, split_writer.split
    bounds = shard_bounds(len(clips), split_writer.num_shards)
    tasks = [
        (position, clips[position], options, jpeg_quality)
        for shard_index in pending
        for position in range(*bounds[shard_index])
    ]
    show_bar = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(
        total=len(clips),
        initial=len(clips) - len(tasks),
        unit="clip",
        desc=f"{split}",
        file=sys.stderr,
        disable=not show_bar,
        dynamic_ncols=True,
    )
    failed = 0

    def counted(results: Iterator[ClipResult], count: int) -> Iterator[ClipResult]:
        nonlocal failed
        for _ in range(count):
            result = next(results)
            failed += result.failure is not None
            bar.update(1)
            if failed:
                bar.set_postfix(failed=failed, refresh=False)
            yield result

    if workers > 1 and len(tasks) > 1:
        results = _parallel_map(_convert_task, tasks, min(workers, len(tasks)), _crashed_clip)
    else:
        results = map(_convert_task, tasks)
    try:
        for shard_index in pending:
            start, end = bounds[shard_index]
            record = split_writer.write_shard(
                shard_index, counted(results, end - start), labels=listing.labels
            )
            if not show_bar:
                logger.info(
                    "%s: wrote %s (%d clips, %d failed)",
                    split, record["file"], len(record["clips"]), len(record["failures"]),
                )
    finally:
        bar.close()
        if hasattr(results, "close"):
            results.close()  # shuts the worker processes down


def write_split(
    out_dir: str,
    split: str,
    clips: Iterable[tuple[np.ndarray, int, str]],
    labels: Sequence[str],
    num_shards: int = 1,
    *,
    jpeg_quality: int = features.DEFAULT_JPEG_QUALITY,
    feature_keys: features.FeatureKeys | dict | None = None,
) -> dict:
    """Writes a small split from in-memory clips (replacing that split if present).

    Args:
        out_dir: output directory (created).
        split: split name; the trainer reads `train` and `validation`.
        clips: `(frames uint8 [num_frames, height, width, 3], label_index,
            media_id)` tuples.
        labels: class names; written to `labels.txt` (which must match if it
            exists already).
        num_shards: number of shard files `<split>-0000k-of-0000N.tfrecord`.
        jpeg_quality: JPEG quality of the stored frames.
        feature_keys: feature names to write (default: the module constants).

    Returns:
        The manifest dict (also written to `out_dir/<split>.manifest.json`).

    Raises:
        ValueError: bad frames or label index (naming the clip position), no
            clip, or a `labels.txt` with other classes.

    Example:
        >>> frames = np.zeros((4, 48, 64, 3), np.uint8)
        >>> write_split(tmp_dir, "train", [(frames, 0, "a")], ["open", "close"])["converted"]
        1
    """
    keys = features.FeatureKeys.from_any(feature_keys)
    labels = [str(name) for name in labels]
    results = []
    for position, item in enumerate(clips):
        try:
            frames, label_index, media_id = item
        except (TypeError, ValueError):
            raise ValueError(
                f"`clips[{position}]` must be (frames, label_index, media_id). "
                f"Received: {type(item).__name__}."
            ) from None
        if not 0 <= int(label_index) < len(labels):
            raise ValueError(
                f"`clips[{position}]` has label_index={label_index}. Expected 0 to "
                f"{len(labels) - 1} ({len(labels)} labels)."
            )
        try:
            encoded = features.encode_frames(np.asarray(frames), jpeg_quality)
        except ValueError as error:
            raise ValueError(f"`clips[{position}]`: {error}") from None
        shape = np.asarray(frames).shape
        results.append(
            ClipResult(
                position, str(media_id), str(media_id), int(label_index), encoded,
                int(shape[0]), int(shape[1]), int(shape[2]),
            )
        )
    if not results:
        raise ValueError("`clips` must hold at least one clip. Received: no clips.")
    split_writer = _SplitWriter(out_dir, split, num_shards, _fingerprint(["write_split", split]))
    os.makedirs(out_dir, exist_ok=True)
    run_dir.write_labels(split_lib.labels_path(out_dir), labels, keep_existing=True)
    split_writer.remove_existing()
    for shard_index, (start, end) in enumerate(shard_bounds(len(results), split_writer.num_shards)):
        split_writer.write_shard(shard_index, results[start:end], keys, labels)
    return _write_manifest(
        split_writer, labels, len(results), {"jpeg_quality": int(jpeg_quality)}
    )
