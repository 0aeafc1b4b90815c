"""Clip augmentation and evaluation crops, as standalone tensor functions.

Every random function takes an explicit stateless `seed` (int `[2]` tensor),
so it is deterministic and testable outside tf.data. One crop window is drawn
per clip and applied to all its frames (the frames of a clip move together).

- Training: the official multi-scale crop (`multi_scale_crop_window`), decoded
  straight from the JPEGs (`decode_crop`), `random_flip` (on the crop, which
  is usually smaller than the output), then `resize_frames`.
- Evaluation: `center_crop_eval` (frames at `eval_size`, centre crop), reused
  as-is by the serving export; `eval_crops` for 1 or 3 crops per clip.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

MULTI_SCALE_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)

# The 13 fixed crop positions of the official multi-scale crop, as multiples
# of a step of a quarter of the free space: 4 corners, centre, 4 edge
# midpoints, 4 quarter points. Pairs are (x multiple, y multiple).
MULTI_SCALE_CROP_OFFSETS = (
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
    (0, 2), (4, 2), (2, 4), (2, 0),
    (1, 1), (3, 1), (1, 3), (3, 3),
)

# Something-Something V1 classes whose meaning swaps under a horizontal flip:
# "Pulling/Pushing something from left to right" <-> "... right to left" and
# "Turning the camera left/right while filming something".
SSV1_FLIP_LABEL_MAP = {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}
SSV1_NO_FLIP_CLASSES = tuple(sorted(SSV1_FLIP_LABEL_MAP))

# A crop side this close to the output size is snapped to it (as the official
# implementation does, so that e.g. a 222-pixel crop is not resized to 224).
_SNAP_PIXELS = 3


def scale_pairs(num_scales: int, max_distort: int = 1) -> list[tuple[int, int]]:
    """`(height scale index, width scale index)` pairs whose indices differ by ≤ `max_distort`."""
    return [
        (height_index, width_index)
        for height_index in range(num_scales)
        for width_index in range(num_scales)
        if abs(height_index - width_index) <= max_distort
    ]


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


def _to_uint8(frames: tf.Tensor) -> tf.Tensor:
    # Bilinear (non-antialiased) interpolation of uint8 values stays within
    # [0, 255], so rounding half up needs no clipping (which costs a pass).
    return tf.cast(frames + 0.5, tf.uint8)


def resize_frames(frames, size: Sequence[int]) -> tf.Tensor:
    """Bilinear resize of uint8 frames `[..., height, width, 3]` to `size`, rounded to uint8."""
    # Resizing float32 input is about twice as fast as resizing uint8 input.
    return _to_uint8(tf.image.resize(tf.cast(frames, tf.float32), size, method="bilinear"))


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


def decode_crop_resize(encoded_frames, window, crop_size: int, num_frames: int) -> tf.Tensor:
    """`decode_crop` then `resize_frames` to `crop_size` × `crop_size`.

    Returns:
        uint8 `[num_frames, crop_size, crop_size, 3]`.
    """
    return resize_frames(decode_crop(encoded_frames, window, num_frames), [crop_size, crop_size])


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


def _resize_to(frames, eval_size):
    if eval_size is None:
        return frames
    target_height, target_width = int(eval_size[0]), int(eval_size[1])
    shape = tf.shape(frames)
    same = tf.logical_and(tf.equal(shape[-3], target_height), tf.equal(shape[-2], target_width))

    def resize():
        flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], axis=0))
        resized = resize_frames(flat, [target_height, target_width])
        return tf.reshape(
            tf.cast(resized, frames.dtype),
            tf.concat([shape[:-3], [target_height, target_width, shape[-1]]], axis=0),
        )

    return tf.cond(same, lambda: frames, resize)


def _check_crop(frames, crop_size: int):
    shape = tf.shape(frames)
    return tf.debugging.assert_greater_equal(
        tf.minimum(shape[-3], shape[-2]),
        crop_size,
        message=f"frames are smaller than crop_size={crop_size}",
    )


def center_crop_eval(frames, crop_size: int, eval_size: Sequence[int] | None = (240, 320)):
    """Evaluation preprocessing: frames resized to `eval_size` (if they differ), centre crop.

    The official test recipe: frames at 240×320, one centre crop of 224. The
    serving export calls this same function in its graph.

    Args:
        frames: uint8 `[..., height, width, 3]` (e.g. `[num_frames, H, W, 3]`
            or `[batch, num_frames, H, W, 3]`).
        crop_size: side of the square crop.
        eval_size: `(height, width)` frames are resized to first (bilinear),
            only when they have another size; None keeps them as they are.

    Returns:
        `[..., crop_size, crop_size, 3]`, the dtype of `frames`; the crop
        starts at `((H - crop_size) // 2, (W - crop_size) // 2)`.
    """
    frames = _resize_to(tf.convert_to_tensor(frames), eval_size)
    with tf.control_dependencies([_check_crop(frames, crop_size)]):
        shape = tf.shape(frames)
        top = (shape[-3] - crop_size) // 2
        left = (shape[-2] - crop_size) // 2
        cropped = frames[..., top : top + crop_size, left : left + crop_size, :]
    return tf.ensure_shape(cropped, frames.shape[:-3].concatenate([crop_size, crop_size, None]))


def eval_crops(
    frames, crop_size: int, num_crops: int = 1, eval_size: Sequence[int] | None = (240, 320)
):
    """One or three evaluation crops of each clip.

    One crop is `center_crop_eval`. Three crops are taken along the long side
    (left, centre, right for landscape frames; top, centre, bottom for portrait
    ones), centred on the short side, as the official 3-crop test.

    Args:
        frames: uint8 `[..., height, width, 3]`.
        crop_size: side of the square crops.
        num_crops: 1 or 3.
        eval_size: as in `center_crop_eval`.

    Returns:
        `[num_crops, ..., crop_size, crop_size, 3]`.
    """
    if num_crops == 1:
        return center_crop_eval(frames, crop_size, eval_size)[tf.newaxis]
    if num_crops != 3:
        raise ValueError(f"`num_crops` must be 1 or 3. Received: {num_crops}.")
    frames = _resize_to(tf.convert_to_tensor(frames), eval_size)
    with tf.control_dependencies([_check_crop(frames, crop_size)]):
        shape = tf.shape(frames)
        height, width = shape[-3], shape[-2]
        landscape = width >= height
        crops = []
        for multiple in (0, 2, 4):
            top = tf.where(landscape, (height - crop_size) // 2, multiple * ((height - crop_size) // 4))
            left = tf.where(landscape, multiple * ((width - crop_size) // 4), (width - crop_size) // 2)
            crops.append(frames[..., top : top + crop_size, left : left + crop_size, :])
    stacked = tf.stack(crops)
    return tf.ensure_shape(
        stacked, tf.TensorShape([3]).concatenate(frames.shape[:-3]).concatenate([crop_size, crop_size, None])
    )
