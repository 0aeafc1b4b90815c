"""The official multi-scale crop geometry, in plain Python and NumPy.

`tfrecords.augment.multi_scale_crop_window` draws the window inside tf.data;
`multi_scale_crop_window_numpy` is its NumPy twin for the input path that
needs no TensorFlow (`trainer.numpy_data`). Both choose among the same scale
pairs and the same 13 positions; they draw with different random generators,
so the same seed gives different (equally distributed) windows.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

MULTI_SCALE_CROP_SCALES = (1.0, 0.875, 0.75, 0.66)

# The 13 fixed crop positions of the official multi-scale crop, as multiples
# of a step of a quarter of the free space: 4 corners, centre, 4 edge
# midpoints, 4 quarter points. Pairs are (x multiple, y multiple).
MULTI_SCALE_CROP_OFFSETS = (
    (0, 0), (4, 0), (0, 4), (4, 4), (2, 2),
    (0, 2), (4, 2), (2, 4), (2, 0),
    (1, 1), (3, 1), (1, 3), (3, 3),
)

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


def multi_scale_crop_window_numpy(
    image_height: int,
    image_width: int,
    crop_size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTI_SCALE_CROP_SCALES,
    max_distort: int = 1,
) -> tuple[int, int, int, int]:
    """NumPy twin of `tfrecords.augment.multi_scale_crop_window` (same rules).

    Returns:
        `(offset_y, offset_x, crop_height, crop_width)`.
    """
    if not scales:
        raise ValueError(f"`scales` must not be empty. Received: {scales}.")
    pairs = scale_pairs(len(scales), max_distort)
    base = min(int(image_height), int(image_width))
    sizes = [int(np.floor(base * float(scale))) for scale in scales]
    sizes = [crop_size if abs(size - crop_size) < _SNAP_PIXELS else size for size in sizes]
    height_index, width_index = pairs[int(rng.integers(len(pairs)))]
    crop_height = min(sizes[height_index], int(image_height))
    crop_width = min(sizes[width_index], int(image_width))
    multiple_x, multiple_y = MULTI_SCALE_CROP_OFFSETS[int(rng.integers(len(MULTI_SCALE_CROP_OFFSETS)))]
    offset_x = multiple_x * ((int(image_width) - crop_width) // 4)
    offset_y = multiple_y * ((int(image_height) - crop_height) // 4)
    return offset_y, offset_x, crop_height, crop_width
