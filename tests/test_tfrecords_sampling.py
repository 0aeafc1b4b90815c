"""Frame sampling and clip augmentation functions, tested standalone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from selfy_tf import sampling
from tfrecords import augment


@pytest.fixture(autouse=True)
def _isolate_keras_state():
    """These tests touch no Keras state: skip the shared per-test Keras reset (slow)."""
    yield


def _segment_bounds(num_available: int, num_frames: int) -> list[tuple[int, int]]:
    """Independent reference: equal segments; an empty segment takes its start frame."""
    bounds = []
    for segment in range(num_frames):
        start = (segment * num_available) // num_frames
        end = ((segment + 1) * num_available) // num_frames
        bounds.append((start, max(end, start + 1)))
    return bounds


class TestSampling:
    def test_train_indices_one_frame_per_segment(self):
        cases = [(available, frames) for available in (1, 3, 8, 9, 17, 100) for frames in (1, 8, 16)]
        for (num_available, num_frames), seed in ((case, seed) for case in cases for seed in range(3)):
            bounds = _segment_bounds(num_available, num_frames)
            indices = sampling.sample_train_indices(num_available, num_frames, seed)
            assert indices.shape == (num_frames,)
            for index, (start, end) in zip(indices, bounds):
                assert start <= index < end
            tf_indices = sampling.sample_train_indices_tf(num_available, num_frames, [seed, 1])
            for index, (start, end) in zip(tf_indices.numpy(), bounds):
                assert start <= index < end

    def test_train_indices_cover_each_segment(self):
        seen = [set() for _ in range(4)]
        for seed in range(200):
            for segment, index in enumerate(sampling.sample_train_indices(20, 4, seed)):
                seen[segment].add(int(index))
        assert seen == [set(range(5 * s, 5 * s + 5)) for s in range(4)]

    def test_train_indices_deterministic(self):
        first = sampling.sample_train_indices_tf(50, 8, [3, 4]).numpy()
        again = sampling.sample_train_indices_tf(50, 8, [3, 4]).numpy()
        np.testing.assert_array_equal(first, again)
        np.testing.assert_array_equal(
            sampling.sample_train_indices(50, 8, 7), sampling.sample_train_indices(50, 8, 7)
        )

    def test_eval_indices_match_tsn_centres(self):
        for num_available in (1, 3, 8, 10, 37, 120):
            tick = num_available / 8
            expected = [
                min(int(tick / 2.0 + tick * segment), num_available - 1) for segment in range(8)
            ]
            np.testing.assert_array_equal(sampling.sample_eval_indices(num_available, 8)[0], expected)
            np.testing.assert_array_equal(
                sampling.sample_eval_indices_tf(num_available, 8).numpy()[0], expected
            )

    def test_short_clip_repeats_frames(self):
        np.testing.assert_array_equal(
            sampling.sample_eval_indices(3, 8)[0], [0, 0, 0, 1, 1, 2, 2, 2]
        )

    def test_eval_multi_clip(self):
        # Clip k of K takes floor(n / T * (s + (k + 0.5) / K)).
        indices = sampling.sample_eval_indices(16, 4, num_clips=2)
        np.testing.assert_array_equal(indices, [[1, 5, 9, 13], [3, 7, 11, 15]])
        np.testing.assert_array_equal(sampling.sample_eval_indices_tf(16, 4, 2).numpy(), indices)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="`num_available_frames` must be at least 1"):
            sampling.sample_eval_indices(0, 8)
        with pytest.raises(ValueError, match="`num_frames` must be at least 1"):
            sampling.sample_train_indices(5, 0)
        with pytest.raises(ValueError, match="`num_clips` must be at least 1"):
            sampling.sample_eval_indices(5, 2, num_clips=0)


class TestStreamSampling:
    @pytest.mark.parametrize("available,num_frames,stride", [(30, 8, 2), (16, 8, 2), (5, 4, 3), (1, 3, 1)])
    def test_consecutive_frames_at_the_stride(self, available, num_frames, stride):
        starts = max(available - (num_frames - 1) * stride, 1)
        seen = set()
        for seed in range(40):
            numpy_indices = sampling.sample_stream_indices(available, num_frames, stride, seed)
            tf_indices = sampling.sample_stream_indices_tf(
                tf.constant(available), num_frames, stride, tf.constant([seed, 7])
            ).numpy()
            for indices in (numpy_indices, tf_indices):
                start = int(indices[0])
                assert 0 <= start < starts
                expected = [min(start + k * stride, available - 1) for k in range(num_frames)]
                assert indices.tolist() == expected
            seen.add(int(numpy_indices[0]))
        # The start is random wherever there is room for more than one.
        assert len(seen) > 1 or starts == 1

    def test_bad_stride(self):
        with pytest.raises(ValueError, match="`stride` must be a positive integer"):
            sampling.sample_stream_indices(10, 4, 0)


def _expected_windows(height, width, crop_size, scales=(1, 0.875, 0.75, 0.66)):
    """Independent reference of every multi-scale crop window (offset_y, offset_x, h, w)."""
    base = min(height, width)
    sizes = [int(base * scale) for scale in scales]
    sizes = [crop_size if abs(size - crop_size) < 3 else size for size in sizes]
    offsets = [
        (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),  # corners, centre
        (0, 2), (4, 2), (2, 4), (2, 0),  # edge midpoints
        (1, 1), (3, 1), (1, 3), (3, 3),  # quarter points
    ]
    windows = set()
    for i, crop_height in enumerate(sizes):
        for j, crop_width in enumerate(sizes):
            if abs(i - j) > 1:
                continue
            crop_height, crop_width = min(crop_height, height), min(crop_width, width)
            step_y, step_x = (height - crop_height) // 4, (width - crop_width) // 4
            for multiple_x, multiple_y in offsets:
                windows.add((multiple_y * step_y, multiple_x * step_x, crop_height, crop_width))
    return windows


class TestMultiScaleCrop:
    @pytest.mark.parametrize("height,width", [(240, 320), (254, 340)])
    def test_windows_are_the_official_set(self, height, width):
        seeds = tf.stack([tf.range(2500), tf.fill([2500], 9)], axis=1)
        windows = tf.function(
            lambda seeds: tf.map_fn(
                lambda seed: augment.multi_scale_crop_window(height, width, 224, seed), seeds
            )
        )(seeds)
        seen = {tuple(window) for window in windows.numpy().tolist()}
        assert seen == _expected_windows(height, width, 224)

    def test_scale_pairs_and_offsets(self):
        pairs = augment.scale_pairs(4, max_distort=1)
        assert len(pairs) == 10 and all(abs(i - j) <= 1 for i, j in pairs)
        assert len(set(augment.MULTI_SCALE_CROP_OFFSETS)) == 13

    def test_snapping_near_crop_size(self):
        # 254 * 0.875 = 222.25 -> 222, within 3 pixels of 224: snapped to 224.
        sizes = {window[2] for window in _expected_windows(254, 340, 224)}
        assert 224 in sizes and 222 not in sizes

    def test_decode_crop_then_resize_matches_decode_then_crop(self):
        rng = np.random.default_rng(0)
        gradient = np.linspace(0, 200, 64, dtype=np.float64)
        frames = []
        for index in range(3):
            image = np.stack(
                [np.add.outer(gradient[:48] * 0.5, gradient) / 2 + 10 * index] * 3, axis=-1
            ) + rng.integers(0, 5, (48, 64, 3))
            frames.append(np.clip(image, 0, 255).astype(np.uint8))
        encoded = []
        for frame in frames:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
            encoded.append(buffer.getvalue())
        window = tf.constant([4, 8, 32, 40])
        # The training parser's steps: decode the crop window only, then resize.
        crops = augment.decode_crop(tf.constant(encoded), [4, 8, 32, 32], 3)
        # With the output size of the window, nothing is resized: an exact crop.
        out = augment.resize_frames(crops, [32, 32]).numpy()
        for frame_out, data in zip(out, encoded):
            decoded = tf.io.decode_jpeg(data, channels=3).numpy()
            np.testing.assert_allclose(frame_out, decoded[4:36, 8:40], atol=1)
            # Pillow's JPEG decoder rounds differently by a few levels.
            reference = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            np.testing.assert_allclose(frame_out, reference[4:36, 8:40], atol=6)
        resized = augment.resize_frames(augment.decode_crop(tf.constant(encoded), window, 3), [16, 16])
        assert resized.shape == (3, 16, 16, 3) and resized.dtype == tf.uint8


class TestFlip:
    def _clip(self):
        return tf.reshape(tf.range(2 * 2 * 3 * 3), [2, 2, 3, 3])

    def test_flip_is_a_horizontal_mirror_about_half_the_time(self):
        frames = self._clip()
        flipped = 0
        for seed in range(64):
            out, label = augment.random_flip(frames, 5, [seed, 0])
            assert int(label) == 5
            if not np.array_equal(out.numpy(), frames.numpy()):
                np.testing.assert_array_equal(out.numpy(), frames.numpy()[:, :, ::-1])
                flipped += 1
        assert 16 < flipped < 48

    def test_no_flip_classes_never_flip(self):
        frames = self._clip()
        for seed in range(32):
            out, _ = augment.random_flip(frames, 86, [seed, 0], no_flip_classes=(86, 87))
            np.testing.assert_array_equal(out.numpy(), frames.numpy())

    def test_flip_label_map_swaps_label_when_flipped(self):
        frames = self._clip()
        outcomes = set()
        for seed in range(32):
            out, label = augment.random_flip(frames, 86, [seed, 0], flip_label_map={86: 87, 87: 86})
            was_flipped = not np.array_equal(out.numpy(), frames.numpy())
            assert int(label) == (87 if was_flipped else 86)
            outcomes.add(was_flipped)
        assert outcomes == {True, False}

    def test_conflicting_flip_settings(self):
        with pytest.raises(ValueError, match=r"classes \[86\] are both in `no_flip_classes`"):
            augment.random_flip(self._clip(), 0, [0, 0], (86,), {86: 87})
