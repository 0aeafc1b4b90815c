"""Clip augmentation and evaluation crops, as standalone tensor functions.

Every random function takes an explicit stateless `seed` (int `[2]` tensor),
so it is deterministic and testable outside tf.data. One crop window is drawn
per clip and applied to all its frames (the frames of a clip move together).

- Training: the official multi-scale crop (`multi_scale_crop_window`), decoded
  straight from the JPEGs (`decode_crop`), `random_flip` (on the crop, which
  is usually smaller than the output), then `resize_frames`.
- Evaluation is not augmented: it takes the one evaluation view of
  `selfy_tf.eval_view`, which shares `resize_frames` with training.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

# The evaluation view owns the resize that training's crops share.
from selfy_tf.eval_view import resize_frames  # noqa: F401  (re-exported)

# The crop geometry is plain Python (shared with the NumPy input path).
from tfrecords.crop_windows import (  # noqa: F401  (re-exported)
    _SNAP_PIXELS,
    MULTI_SCALE_CROP_OFFSETS,
    MULTI_SCALE_CROP_SCALES,
    scale_pairs,
)

# Something-Something V1 classes whose meaning swaps under a horizontal flip:
# "Pulling/Pushing something from left to right" <-> "... right to left" and
# "Turning the camera left/right while filming something".
SSV1_FLIP_LABEL_MAP = {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}
SSV1_NO_FLIP_CLASSES = tuple(sorted(SSV1_FLIP_LABEL_MAP))


def multi_scale_crop_window(
    image_height,
    image_width,
    crop_size: int,
    seed,
    scales: Sequence[float] = MULTI_SCALE_CROP_SCALES,
    max_distort: int = 1,
) -> tf.Tensor:
    """Draws the official multi-scale crop window for an image.

    The crop height and width are each `floor(scale * short side)` for a scale
    in `scales`, with scale indices differing by at most `max_distort`; a side
    within 3 pixels of `crop_size` becomes `crop_size` (never larger than the
    image). The crop is placed at one of the 13 `MULTI_SCALE_CROP_OFFSETS`,
    with steps of `(image side - crop side) // 4`. The caller then resizes the
    crop to `crop_size` × `crop_size`.

    Args:
        image_height: int scalar (tensor or Python).
        image_width: int scalar (tensor or Python).
        crop_size: output side after resizing (used for the snapping only).
        seed: stateless seed, int `[2]`.
        scales: candidate scales of the short side.
        max_distort: largest difference of height and width scale indices.

    Returns:
        int32 `[4]`: `(offset_y, offset_x, crop_height, crop_width)`, the
        window format of `tf.io.decode_and_crop_jpeg`.
    """
    if not scales:
        raise ValueError(f"`scales` must not be empty. Received: {scales}.")
    pairs = scale_pairs(len(scales), max_distort)
    height = tf.cast(image_height, tf.int32)
    width = tf.cast(image_width, tf.int32)
    base = tf.cast(tf.minimum(height, width), tf.float64)
    sizes = tf.cast(tf.floor(base * tf.constant(scales, tf.float64)), tf.int32)
    sizes = tf.where(tf.abs(sizes - crop_size) < _SNAP_PIXELS, crop_size, sizes)
    pair_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    pair = tf.random.stateless_uniform(
        [], seed=pair_seed, minval=0, maxval=len(pairs), dtype=tf.int32
    )
    pair_indices = tf.gather(tf.constant(pairs, tf.int32), pair)
    crop_height = tf.minimum(tf.gather(sizes, pair_indices[0]), height)
    crop_width = tf.minimum(tf.gather(sizes, pair_indices[1]), width)
    offset = tf.random.stateless_uniform(
        [], seed=offset_seed, minval=0, maxval=len(MULTI_SCALE_CROP_OFFSETS), dtype=tf.int32
    )
    multiples = tf.gather(tf.constant(MULTI_SCALE_CROP_OFFSETS, tf.int32), offset)
    offset_x = multiples[0] * ((width - crop_width) // 4)
    offset_y = multiples[1] * ((height - crop_height) // 4)
    return tf.stack([offset_y, offset_x, crop_height, crop_width])


def decode_crop(encoded_frames, window, num_frames: int) -> tf.Tensor:
    """Decodes only the crop window of each JPEG frame (the rest is never decoded).

    Args:
        encoded_frames: string `[num_frames]`, JPEG bytes.
        window: int32 `[4]` `(offset_y, offset_x, crop_height, crop_width)`.
        num_frames: static number of frames (the decode is unrolled).

    Returns:
        uint8 `[num_frames, crop_height, crop_width, 3]`.
    """
    return tf.stack(
        [
            tf.io.decode_and_crop_jpeg(encoded_frames[index], window, channels=3)
            for index in range(num_frames)
        ]
    )


def random_flip(
    frames,
    label,
    seed,
    no_flip_classes: Sequence[int] = (),
    flip_label_map: Mapping[int, int] | None = None,
):
    """Flips a clip horizontally with probability 1/2, respecting left/right classes.

    Clips of `no_flip_classes` are never flipped. A flipped clip of a class in
    `flip_label_map` takes the mapped label (e.g. "left to right" becomes
    "right to left"); other classes keep their label.

    Args:
        frames: `[num_frames, height, width, channels]`.
        label: int scalar.
        seed: stateless seed, int `[2]`.
        no_flip_classes: classes never flipped.
        flip_label_map: `{class: class after flipping}`.

    Returns:
        `(frames, label)`, label with the dtype of `label`.

    Raises:
        ValueError: a class both in `no_flip_classes` and `flip_label_map`.
    """
    no_flip = sorted({int(value) for value in no_flip_classes})
    mapping = {int(key): int(value) for key, value in (flip_label_map or {}).items()}
    both = sorted(set(no_flip) & set(mapping))
    if both:
        raise ValueError(
            f"classes {both} are both in `no_flip_classes` and `flip_label_map`. "
            "Use one or the other for a class."
        )
    label = tf.convert_to_tensor(label)
    label_64 = tf.cast(label, tf.int64)
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    if no_flip:
        flip = tf.logical_and(
            flip, tf.logical_not(tf.reduce_any(tf.equal(label_64, tf.constant(no_flip, tf.int64))))
        )
    frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[-2]), lambda: frames)
    if mapping:
        keys = tf.constant(list(mapping), tf.int64)
        values = tf.constant(list(mapping.values()), tf.int64)
        matches = tf.equal(keys, label_64)
        mapped = tf.where(
            tf.reduce_any(matches), tf.reduce_sum(tf.where(matches, values, 0)), label_64
        )
        label = tf.cast(tf.where(flip, mapped, label_64), label.dtype)
    return frames, label
