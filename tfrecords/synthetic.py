"""The synthetic motion dataset (`selfy_tf.datasets.synthetic_motion`) as TFRecord splits.

    from tfrecords.synthetic import write_synthetic_motion
    write_synthetic_motion("data/motion", num_train=800, num_validation=200)

The clips are made by the generator in `selfy_tf.datasets`; this module
only writes them, with the project's own writers, so the result is read by
the same input pipeline as any converted video dataset.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from selfy_tf.datasets import synthetic_motion
from tfrecords import sources, writer

logger = logging.getLogger(__name__)

_WRITE_MODES = ("tfrecords", "videos")


def write_synthetic_motion(
    out_dir: str | os.PathLike,
    num_train: int = 800,
    num_validation: int = 200,
    seed: int = 0,
    num_frames: int = 8,
    size: int = 64,
    classes: Sequence[str] | None = None,
    num_shards: int = 1,
    config: synthetic_motion.MotionConfig = synthetic_motion.DEFAULT_CONFIG,
    via: str = "tfrecords",
    progress: bool = False,
) -> dict:
    """Writes train and validation splits of synthetic motion clips as TFRecord clips.

    With `via="tfrecords"` the clips go straight through the TFRecord writer
    (`tfrecords.write_split`). With `via="videos"` each clip is first written
    as an MP4 file under `out_dir/videos/<split>/<class>/` and the splits are
    converted by the `folders` converter (`tfrecords.convert_split`), exactly
    as a user's own videos would be.

    Args:
        out_dir: dataset directory to create or fill.
        num_train: training clips.
        num_validation: validation clips.
        seed: dataset seed.
        num_frames: frames per clip.
        size: frame side in pixels (even for `via="videos"`).
        classes: class names to use (default: all of
            `synthetic_motion.CLASS_NAMES`).
        num_shards: TFRecord shards per split.
        config: ranges of the random factors.
        via: `"tfrecords"` or `"videos"`.
        progress: show progress bars.

    Returns:
        A summary dict: `out_dir`, `classes`, `num_train`, `num_validation`,
        `num_frames`, `size`, `seed`, `via`.

    Raises:
        ValueError: for bad counts, sizes, classes or `via`.
    """
    classes = synthetic_motion.check_dataset_settings(num_train, num_validation, num_frames, size, classes)
    if via not in _WRITE_MODES:
        raise ValueError(f"`via` must be one of {list(_WRITE_MODES)}. Received: via={via!r}.")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for split, num_clips in (("train", num_train), ("validation", num_validation)):
        clips = synthetic_motion.iter_split(num_clips, seed, split, num_frames, size, classes, config)
        if progress:
            from tqdm import tqdm

            clips = tqdm(clips, total=num_clips, desc=f"synthetic {split}", unit="clip", leave=False)
        if via == "tfrecords":
            writer.write_split(out_dir, split, clips, labels=list(classes), num_shards=num_shards)
        else:
            _write_through_videos(out_dir, split, clips, classes, num_shards, seed, progress)
        logger.info("Wrote %d synthetic %s clips to %s (via %s)", num_clips, split, out_dir, via)
    return {
        "out_dir": out_dir,
        "classes": list(classes),
        "num_train": int(num_train),
        "num_validation": int(num_validation),
        "num_frames": int(num_frames),
        "size": int(size),
        "seed": int(seed),
        "via": via,
    }


def _write_through_videos(out_dir, split, clips, classes, num_shards, seed, progress) -> None:
    """Writes a split's clips as MP4 files, then converts them with the `folders` converter."""
    video_root = os.path.join(out_dir, "videos", split)
    for frames, label, media_id in clips:
        synthetic_motion.write_video(os.path.join(video_root, classes[label], f"{media_id}.mp4"), frames)
    listing = sources.list_folders(video_root, known_labels=list(classes))
    writer.convert_split(
        out_dir,
        split,
        listing,
        num_shards=num_shards,
        workers=1,
        overwrite=True,
        progress=progress,
        extra_manifest={"source": "synthetic_motion", "seed": int(seed)},
    )
