"""The synthetic motion dataset: determinism, balance, no single-frame leak."""

import dataclasses
import math

import numpy as np
import pytest

from selfy_tf.datasets import synthetic_motion
from selfy_tf.datasets.synthetic_motion import CLASS_NAMES, DEFAULT_CONFIG


class TestSyntheticMotionBasic:
    def test_clip_shape_and_dtype(self):
        frames = synthetic_motion.generate_clip(0, np.random.default_rng(0), num_frames=6, size=32)
        assert frames.shape == (6, 32, 32, 3)
        assert frames.dtype == np.uint8

    def test_same_seed_same_split_and_other_seed_differs(self):
        clips_a, labels_a = synthetic_motion.generate_split(12, seed=3, num_frames=4, size=24)
        clips_b, labels_b = synthetic_motion.generate_split(12, seed=3, num_frames=4, size=24)
        clips_c, _ = synthetic_motion.generate_split(12, seed=4, num_frames=4, size=24)
        np.testing.assert_array_equal(clips_a, clips_b)
        np.testing.assert_array_equal(labels_a, labels_b)
        assert np.abs(clips_a.astype(int) - clips_c.astype(int)).mean() > 10

    def test_splits_of_one_seed_differ(self):
        train, _ = synthetic_motion.generate_split(4, seed=0, split="train", num_frames=4, size=24)
        validation, _ = synthetic_motion.generate_split(
            4, seed=0, split="validation", num_frames=4, size=24
        )
        assert np.abs(train.astype(int) - validation.astype(int)).mean() > 10

    @pytest.mark.parametrize("num_clips", [30, 37])
    def test_split_is_class_balanced(self, num_clips):
        labels = synthetic_motion.split_labels(num_clips, seed=1, num_classes=len(CLASS_NAMES))
        counts = np.bincount(labels, minlength=len(CLASS_NAMES))
        assert counts.max() - counts.min() <= 1
        assert counts.sum() == num_clips
        # Shuffled, not in class order.
        assert not np.array_equal(labels, np.arange(num_clips) % len(CLASS_NAMES))

    def test_class_subset_relabels_from_zero(self):
        classes = ("move_left", "move_right")
        items = list(synthetic_motion.iter_split(6, 0, num_frames=3, size=16, classes=classes))
        assert sorted(label for _, label, _ in items) == [0, 0, 0, 1, 1, 1]
        assert items[0][2] == "train-000000"

    def test_bad_arguments_raise_with_received_value(self):
        rng = np.random.default_rng(0)
        with pytest.raises(ValueError, match=r"`class_index` must be .*Received: class_index=10"):
            synthetic_motion.generate_clip(10, rng)
        with pytest.raises(ValueError, match=r"`num_frames` must be .*Received: num_frames=1"):
            synthetic_motion.generate_clip(0, rng, num_frames=1)
        with pytest.raises(ValueError, match=r"`size` must be .*Received: size=8"):
            synthetic_motion.generate_clip(0, rng, size=8)
        with pytest.raises(ValueError, match=r"Unknown split.*split='dev'"):
            synthetic_motion.generate_split(2, 0, split="dev")
        with pytest.raises(ValueError, match=r"Unknown synthetic motion class.*'jump'"):
            synthetic_motion.generate_split(2, 0, classes=["jump"])
        with pytest.raises(ValueError, match=r"`num_clips` must be .*num_clips=0"):
            synthetic_motion.split_labels(0, 0)


class TestSyntheticMotionCorrectness:
    def _trajectories(self, name, num_clips=400, num_frames=8, size=64):
        rng = np.random.default_rng(123)
        return [
            synthetic_motion.sample_trajectory(name, rng, num_frames, size, DEFAULT_CONFIG, 10.0)
            for _ in range(num_clips)
        ]

    def test_motions_go_the_named_way(self):
        for name, (sign_y, sign_x) in {
            "move_left": (0, -1),
            "move_right": (0, 1),
            "move_up": (-1, 0),
            "move_down": (1, 0),
        }.items():
            centres, angles, scales = self._trajectories(name, num_clips=1)[0]
            step = np.diff(centres, axis=0)
            assert np.all(np.sign(np.round(step, 6)) == (sign_y, sign_x)), name
            np.testing.assert_allclose(np.diff(angles), 0.0)
            np.testing.assert_allclose(np.diff(scales), 0.0)
        centres, angles, _ = self._trajectories("rotate_clockwise", num_clips=1)[0]
        assert np.all(np.diff(angles) > 0) and np.all(np.diff(centres, axis=0) == 0)
        _, angles, _ = self._trajectories("rotate_counterclockwise", num_clips=1)[0]
        assert np.all(np.diff(angles) < 0)
        _, _, scales = self._trajectories("grow", num_clips=1)[0]
        assert np.all(np.diff(scales) > 0)
        _, _, scales = self._trajectories("shrink", num_clips=1)[0]
        assert np.all(np.diff(scales) < 0)
        centres, _, _ = self._trajectories("move_then_stop", num_clips=1)[0]
        speeds = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        assert np.all(speeds[:3] > 1.0) and np.all(speeds[4:] == 0.0)

    def test_object_stays_inside_the_frame(self):
        size, radius = 64, 10.0
        for name in CLASS_NAMES:
            for centres, _, scales in self._trajectories(name, num_clips=50):
                extent = radius * scales[:, None]
                assert np.all(centres - extent >= 0) and np.all(centres + extent <= size), name

    def test_max_outside_bounds_how_far_the_object_leaves_the_frame(self):
        """With `max_outside=0.5` at most half the object's radius lies past an
        edge, and some clips do reach past it."""
        size, radius = 64, 10.0
        config = dataclasses.replace(DEFAULT_CONFIG, max_outside=0.5)
        rng = np.random.default_rng(7)
        beyond = []
        for name in CLASS_NAMES:
            for _ in range(50):
                centres, _, scales = synthetic_motion.sample_trajectory(name, rng, 8, size, config, radius)
                extent = radius * scales.max()
                # How far the object reaches past the nearest edge, over the clip.
                past_edge = np.max(np.maximum(extent - centres, centres + extent - size))
                assert past_edge <= 0.5 * extent + 1e-9, name
                beyond.append(past_edge)
        assert max(beyond) > 0.25 * radius

    def test_single_frames_share_geometry_statistics_across_classes(self):
        """Per-frame position, size and orientation look alike in every class.

        A frame-wise classifier sees one frame at a time; if the per-frame
        distributions of the object's geometry matched only in the mean, it
        could still read the class from a frame. We compare the mean and the
        spread of each quantity against the pooled statistics of all classes.
        """
        per_class = {}
        for name in CLASS_NAMES:
            centres, orientations, sizes = [], [], []
            for clip_centres, angles, scales in self._trajectories(name):
                centres.append(clip_centres)
                orientations.append(np.stack([np.cos(2 * angles), np.sin(2 * angles)], -1))
                sizes.append(np.log(scales))
            per_class[name] = {
                "centre": np.concatenate(centres),
                "orientation": np.concatenate(orientations),
                "log_scale": np.concatenate(sizes)[:, None],
            }
        for quantity, tolerance in (("centre", 3.0), ("orientation", 0.1), ("log_scale", 0.06)):
            pooled = np.concatenate([stats[quantity] for stats in per_class.values()])
            for name, stats in per_class.items():
                values = stats[quantity]
                np.testing.assert_allclose(
                    values.mean(0), pooled.mean(0), atol=tolerance, err_msg=f"{name} {quantity} mean"
                )
                np.testing.assert_allclose(
                    values.std(0), pooled.std(0), atol=tolerance, err_msg=f"{name} {quantity} std"
                )

    def test_single_frame_pixel_statistics_do_not_separate_classes(self):
        """A frame taken at a random time has the same pixel statistics in every class.

        A frame-wise model does not know which time a frame comes from, so we
        draw one frame per clip at a random index. (The first frame alone
        would tell `grow` from `shrink` by the object's size, but the last
        frame tells it the other way round.)
        """
        clips, labels = synthetic_motion.generate_split(200, seed=5, num_frames=8, size=32)
        times = np.random.default_rng(0).integers(0, 8, size=len(clips))
        frames = clips[np.arange(len(clips)), times].astype(np.float64)
        features = np.stack(
            [frames.mean((1, 2, 3)), frames.std((1, 2, 3)), frames[..., 0].mean((1, 2))], -1
        )
        pooled_mean, pooled_std = features.mean(0), features.std(0)
        for index in range(len(CLASS_NAMES)):
            class_mean = features[labels == index].mean(0)
            # 20 clips per class: the standard error of a class mean is
            # pooled_std / sqrt(20); allow four of them.
            assert np.all(np.abs(class_mean - pooled_mean) < 4 * pooled_std / math.sqrt(20)), (
                CLASS_NAMES[index]
            )

    def test_motion_is_visible_between_frames(self):
        """The object really moves: frame differences exceed the static class's."""
        rng = np.random.default_rng(0)
        moving = synthetic_motion.generate_clip(
            synthetic_motion.class_index("move_right"), rng, 8, 48
        ).astype(float)
        still = synthetic_motion.generate_clip(
            synthetic_motion.class_index("static"), rng, 8, 48
        ).astype(float)
        moving_change = np.abs(moving[-1] - moving[0]).mean()
        still_change = np.abs(still[-1] - still[0]).mean()
        assert moving_change > 1.5 * still_change


class TestColorContrast:
    """`MotionConfig.min_color_distance`: objects told from the background by hue."""

    def test_distinct_colors_keep_the_distance_and_the_luminance(self):
        rng = np.random.default_rng(3)
        reference = np.array([120.0, 110.0, 100.0])
        for _ in range(200):
            color = synthetic_motion._distinct_color(rng, (100.0, 130.0), reference, 60.0)
            assert np.abs(color - reference).max() >= 60.0
            assert 100.0 - 1e-6 <= color @ np.array([0.299, 0.587, 0.114]) <= 130.0 + 1e-6

    def test_no_distance_draws_exactly_one_colour(self):
        """The default keeps every earlier clip (the demo's data) as it was."""
        first, second = np.random.default_rng(5), np.random.default_rng(5)
        reference = np.zeros(3)
        for _ in range(20):
            np.testing.assert_array_equal(
                synthetic_motion._distinct_color(first, (20.0, 200.0), reference, 0.0),
                synthetic_motion._random_color(second, (20.0, 200.0)),
            )

    def test_an_object_as_bright_as_its_background_is_visible_by_hue(self):
        """Flat background and object of luminance 100, no noise: every pixel's
        luminance is 100 (up to rounding and the object's anti-aliased edge),
        yet the object's pixels differ from the background's colour."""
        config = dataclasses.replace(
            DEFAULT_CONFIG,
            noise_std_range=(0.0, 0.0),
            background_grain_std=0.0,
            background_contrast=0.0,
            background_luminance_range=(100.0, 100.0),
            object_luminance_range=(100.0, 100.0),
            min_color_distance=60.0,
        )
        rng = np.random.default_rng(11)
        for _ in range(5):
            frames = synthetic_motion.generate_clip(
                synthetic_motion.class_index("static"), rng, 2, 48, config
            ).astype(float)
            luminance = frames @ np.array([0.299, 0.587, 0.114])
            assert np.abs(luminance - 100.0).max() < 1.5
            colour_change = np.abs(frames[0] - frames[0, 0, 0]).max(axis=-1)
            assert colour_change.max() >= 30.0
