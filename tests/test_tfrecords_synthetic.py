"""`tfrecords.synthetic`: the synthetic motion clips written as TFRecord splits, directly or through MP4 files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from selfy_tf import run_dir
from selfy_tf.datasets import synthetic_motion
from tfrecords import decoder as decoder_lib
from tfrecords.synthetic import write_synthetic_motion

CLASSES = ("move_left", "grow")
SETTINGS = dict(num_train=2, num_validation=2, seed=5, num_frames=4, size=16, classes=CLASSES)


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """These tests touch no Keras state: skip the shared per-test Keras reset (slow)."""
    yield


def _read_split(data_dir: str, split: str) -> dict[str, tuple[int, np.ndarray]]:
    clip_decoder = decoder_lib.Decoder()
    paths = sorted(tf.io.gfile.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
    clips = {}
    for serialized in tf.data.TFRecordDataset(paths):
        decoded = clip_decoder.decode(serialized)
        frames = np.stack([tf.io.decode_jpeg(data).numpy() for data in decoded["encoded_frames"]])
        clips[decoded["media_id"].numpy().decode()] = (int(decoded["label"]), frames)
    return clips


@pytest.mark.parametrize("via", ["tfrecords", "videos"])
def test_the_splits_hold_the_generated_clips(tmp_path, via):
    summary = write_synthetic_motion(tmp_path, via=via, **SETTINGS)
    assert summary["classes"] == list(CLASSES) and summary["via"] == via
    assert run_dir.read_labels(str(tmp_path)) == list(CLASSES)
    for split, count in (("train", 2), ("validation", 2)):
        expected = {
            media_id: (label, frames)
            for frames, label, media_id in synthetic_motion.iter_split(count, 5, split, 4, 16, CLASSES)
        }
        written = _read_split(str(tmp_path), split)
        # Through MP4 files the media id is the file's name, without its folder.
        written = {media_id.split("/")[-1].removesuffix(".mp4"): clip for media_id, clip in written.items()}
        assert sorted(written) == sorted(expected)
        for media_id, (label, frames) in expected.items():
            assert written[media_id][0] == label
            # JPEG (and H.264 for the videos) keep the frames to a few levels.
            difference = np.abs(written[media_id][1].astype(int) - frames.astype(int)).mean()
            assert difference < 12, (media_id, difference)
    if via == "videos":
        assert sorted(os.listdir(tmp_path / "videos" / "train")) == sorted(CLASSES)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"via": "jpegs"}, "`via` must be one of"),
        ({"num_train": 0}, "`num_train` must be a positive integer"),
        ({"classes": ("fly",)}, "Unknown synthetic motion class"),
    ],
)
def test_bad_settings_are_refused_before_writing(tmp_path, overrides, message):
    out_dir = tmp_path / "data"
    with pytest.raises(ValueError, match=message):
        write_synthetic_motion(out_dir, **{**SETTINGS, **overrides})
    assert not out_dir.exists()
