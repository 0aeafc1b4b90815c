"""TSN segment sampling: which frames of a clip to use.

A clip of `num_available_frames` frames is cut into `num_frames` equal
segments; segment `s` covers frames `[floor(s * n / T), floor((s + 1) * n / T))`
(`n` available, `T` wanted). Training takes one random frame in each segment;
evaluation takes the segment centres, `floor(n / T * (s + 0.5))` (the official
test sampling). With `num_clips` evaluation clips, clip `k` takes
`floor(n / T * (s + (k + 0.5) / num_clips))`, spreading the clips evenly.
Clips shorter than `T` repeat frames (a segment holding no frame start takes
the frame at its start).

Stream sampling (`sample_stream_indices`) takes instead `num_frames`
consecutive frames at a fixed `stride` from a random start, the frames a
live stream of a causal model sees (as a camera delivers them): frames
`start, start + stride, ...`, with `start` uniform in
`[0, max(n - (T - 1) * stride, 1))`; clips too short repeat their last frame.

Each function has a NumPy form (for clients and tests) and a TensorFlow form
(`*_tf`, used inside tf.data; traced once, any clip length).
"""

from __future__ import annotations

import numpy as np


def _check(num_available_frames: int, num_frames: int) -> None:
    if int(num_frames) < 1:
        raise ValueError(f"`num_frames` must be at least 1. Received: {num_frames}.")
    if int(num_available_frames) < 1:
        raise ValueError(
            f"`num_available_frames` must be at least 1. Received: {num_available_frames}."
        )


def sample_train_indices(
    num_available_frames: int,
    num_frames: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Random TSN training indices: one random frame in each of `num_frames` segments.

    Args:
        num_available_frames: frames in the clip (≥ 1).
        num_frames: frames to take (≥ 1).
        rng: a NumPy Generator or an integer seed (None: fresh entropy).

    Returns:
        int64 `[num_frames]`, non-decreasing, in `[0, num_available_frames)`.
    """
    _check(num_available_frames, num_frames)
    rng = np.random.default_rng(rng)
    segments = np.arange(num_frames, dtype=np.int64)
    starts = segments * num_available_frames // num_frames
    ends = np.maximum((segments + 1) * num_available_frames // num_frames, starts + 1)
    return starts + np.floor(rng.random(num_frames) * (ends - starts)).astype(np.int64)


def sample_eval_indices(
    num_available_frames: int, num_frames: int, num_clips: int = 1
) -> np.ndarray:
    """Deterministic TSN evaluation indices (segment centres), for `num_clips` clips.

    Args:
        num_available_frames: frames in the clip (≥ 1).
        num_frames: frames per clip (≥ 1).
        num_clips: evenly spread clips (≥ 1); 1 gives the segment centres.

    Returns:
        int64 `[num_clips, num_frames]`.
    """
    _check(num_available_frames, num_frames)
    if int(num_clips) < 1:
        raise ValueError(f"`num_clips` must be at least 1. Received: {num_clips}.")
    tick = num_available_frames / num_frames
    segments = np.arange(num_frames, dtype=np.float64)[None, :]
    shifts = (np.arange(num_clips, dtype=np.float64)[:, None] + 0.5) / num_clips
    indices = np.floor(tick * (segments + shifts)).astype(np.int64)
    return np.minimum(indices, num_available_frames - 1)


def sample_stream_indices(
    num_available_frames: int,
    num_frames: int,
    stride: int,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Random stream-like indices: `num_frames` frames every `stride` frames.

    Args:
        num_available_frames: frames in the clip (≥ 1).
        num_frames: frames to take (≥ 1).
        stride: step between taken frames (≥ 1).
        rng: a NumPy Generator or an integer seed (None: fresh entropy).

    Returns:
        int64 `[num_frames]`, non-decreasing, in `[0, num_available_frames)`.
    """
    _check(num_available_frames, num_frames)
    _check_stride(stride)
    rng = np.random.default_rng(rng)
    starts = max(num_available_frames - (num_frames - 1) * stride, 1)
    start = int(np.floor(rng.random() * starts))
    offsets = np.arange(num_frames, dtype=np.int64) * stride
    return np.minimum(start + offsets, num_available_frames - 1)


def _check_stride(stride: int) -> None:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"`stride` must be a positive integer. Received: stride={stride!r}.")


def sample_stream_indices_tf(num_available_frames, num_frames: int, stride: int, seed):
    """TensorFlow form of `sample_stream_indices` (stateless); returns int32 `[num_frames]`."""
    import tensorflow as tf

    _check_stride(stride)
    available = tf.cast(num_available_frames, tf.int64)
    starts = tf.maximum(available - (num_frames - 1) * stride, 1)
    uniform = tf.random.stateless_uniform([], seed=seed, dtype=tf.float64)
    start = tf.cast(tf.floor(uniform * tf.cast(starts, tf.float64)), tf.int64)
    indices = tf.minimum(start + tf.range(num_frames, dtype=tf.int64) * stride, available - 1)
    return tf.cast(indices, tf.int32)


def sample_train_indices_tf(num_available_frames, num_frames: int, seed):
    """TensorFlow form of `sample_train_indices` (stateless, for tf.data).

    Args:
        num_available_frames: int scalar tensor (≥ 1).
        num_frames: Python int.
        seed: stateless seed, int `[2]` tensor.

    Returns:
        int32 `[num_frames]`.
    """
    import tensorflow as tf

    available = tf.cast(num_available_frames, tf.int64)
    segments = tf.range(num_frames, dtype=tf.int64)
    starts = segments * available // num_frames
    ends = tf.maximum((segments + 1) * available // num_frames, starts + 1)
    uniform = tf.random.stateless_uniform([num_frames], seed=seed, dtype=tf.float64)
    offsets = tf.cast(tf.floor(uniform * tf.cast(ends - starts, tf.float64)), tf.int64)
    return tf.cast(starts + offsets, tf.int32)


def sample_eval_indices_tf(num_available_frames, num_frames: int, num_clips: int = 1):
    """TensorFlow form of `sample_eval_indices`; returns int32 `[num_clips, num_frames]`."""
    import tensorflow as tf

    available = tf.cast(num_available_frames, tf.float64)
    tick = available / num_frames
    segments = tf.range(num_frames, dtype=tf.float64)[tf.newaxis, :]
    shifts = (tf.range(num_clips, dtype=tf.float64)[:, tf.newaxis] + 0.5) / num_clips
    indices = tf.cast(tf.floor(tick * (segments + shifts)), tf.int32)
    return tf.minimum(indices, tf.cast(num_available_frames, tf.int32) - 1)
