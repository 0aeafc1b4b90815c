"""The user-like video generator: sizes, lengths, seeds, and that each class moves as named."""

from __future__ import annotations

import os

import numpy as np
import pytest

from selfy_tf.datasets import user_videos
from selfy_tf.datasets.user_videos import CLASS_NAMES


def _object_track(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the x centroid and the area of the pixels that differ from the
    clip's median frame (the static background), by brute force."""
    clip = frames.astype(np.float64)
    background = np.median(clip, axis=0)
    moving = np.abs(clip - background).max(axis=-1) > 60.0
    xs = np.arange(frames.shape[2])[None, None, :]
    area = moving.sum(axis=(1, 2))
    centroid = (moving * xs).sum(axis=(1, 2)) / np.maximum(area, 1)
    return centroid, area


def _ring_radii(frames: np.ndarray) -> tuple[float, float]:
    """Mean distance from the centre of all changes of the pixels that change
    from the first to the middle frame, and from the middle to the last: for
    a scaling object, two rings, the later one outside the earlier one when
    it grows."""
    first, middle, last = (frames[index].astype(np.float64) for index in (0, len(frames) // 2, -1))
    rings = [np.abs(b - a).max(axis=-1) > 60.0 for a, b in ((first, middle), (middle, last))]
    changed = rings[0] | rings[1]
    ys, xs = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    cy, cx = ys[changed].mean(), xs[changed].mean()
    distance = np.hypot(ys - cy, xs - cx)
    return tuple(float(distance[ring].mean()) for ring in rings)


def _clip(name: str, seed: int, num_frames: int = 16) -> np.ndarray:
    return user_videos.generate_clip(name, np.random.default_rng(seed), (120, 160), num_frames)


class TestGenerateClip:
    @pytest.mark.parametrize("size", user_videos.FRAME_SIZES)
    def test_shape_and_dtype(self, size):
        frames = user_videos.generate_clip("grow", np.random.default_rng(0), size, 18)
        assert frames.shape == (18, *size, 3)
        assert frames.dtype == np.uint8

    @pytest.mark.parametrize("seed", range(4))
    def test_slides_move_the_object_left_or_right(self, seed):
        # Against the static background the left slide's object ends left of
        # where it started, the right slide's right of it.
        left, _ = _object_track(_clip("slide_left", seed))
        right, _ = _object_track(_clip("slide_right", seed))
        assert left[-1] < left[0] - 20
        assert right[-1] > right[0] + 20

    @pytest.mark.parametrize("seed", range(4))
    def test_grow_and_shrink_move_the_outline_out_or_in(self, seed):
        # A growing object changes a ring of pixels in the first half of the
        # clip and a wider ring in the second; a shrinking one the reverse.
        # "still" changes nowhere beyond the noise.
        early, late = _ring_radii(_clip("grow", seed))
        assert late > 1.2 * early
        early, late = _ring_radii(_clip("shrink", seed))
        assert early > 1.2 * late
        still = _clip("still", seed).astype(np.float64)
        assert (np.abs(still[-1] - still[0]).max(axis=-1) > 80.0).sum() < 10

    def test_pairs_are_one_motion_played_backwards(self):
        # With one seed the two classes of a pair draw the same scene: only
        # the order of the frames tells them apart, never a single frame.
        left, right = _object_track(_clip("slide_left", 5)), _object_track(_clip("slide_right", 5))
        np.testing.assert_allclose(left[0], right[0][::-1], atol=1.0)
        np.testing.assert_allclose(left[1], right[1][::-1], rtol=0.1, atol=20)
        grow, shrink = _ring_radii(_clip("grow", 5)), _ring_radii(_clip("shrink", 5))
        np.testing.assert_allclose(grow, shrink[::-1], atol=1.5)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="Unknown class 'jump'"):
            user_videos.generate_clip("jump", np.random.default_rng(0))
        with pytest.raises(ValueError, match="num_frames"):
            user_videos.generate_clip("grow", np.random.default_rng(0), num_frames=1)


class TestWriteFolder:
    def test_tree_lengths_sizes_and_seeds(self, tmp_path):
        from tfrecords.video import read_video_frames

        paths = user_videos.write_folder(tmp_path / "a", clips_per_class=2, seed=0)
        assert len(paths) == 2 * len(CLASS_NAMES)
        assert sorted(os.listdir(tmp_path / "a")) == sorted(CLASS_NAMES)
        shapes = set()
        for path in paths:
            frames = read_video_frames(path)
            assert 16 <= frames.shape[0] <= 24
            shapes.add(frames.shape[1:3])
        assert shapes <= set(user_videos.FRAME_SIZES)
        # Another seed draws other clips; the same seed the same ones (up to
        # the encoder, whose threads may round a few pixels differently).
        again = user_videos.write_folder(tmp_path / "b", clips_per_class=1, seed=0, classes=("grow",))
        other = user_videos.write_folder(tmp_path / "c", clips_per_class=1, seed=1, classes=("grow",))
        first = read_video_frames(paths[CLASS_NAMES.index("grow") * 2]).astype(int)
        same = read_video_frames(again[0]).astype(int)
        assert same.shape == first.shape and np.abs(same - first).mean() < 2
        different = read_video_frames(other[0]).astype(int)
        assert different.shape != first.shape or np.abs(different - first).mean() > 10

    def test_bad_arguments(self, tmp_path):
        with pytest.raises(ValueError, match="clips_per_class"):
            user_videos.write_folder(tmp_path, clips_per_class=0)
        with pytest.raises(ValueError, match="frame_counts"):
            user_videos.write_folder(tmp_path, frame_counts=(8, 4))
        with pytest.raises(ValueError, match="Unknown class"):
            user_videos.write_folder(tmp_path, classes=("wave",))
