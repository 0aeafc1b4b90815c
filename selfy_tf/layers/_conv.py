"""Convolutions of the layers: initialisers, construction, padding geometry.

Every convolution is bias-free (a batch norm follows) and pads explicitly,
PyTorch style; `conv2d` gives the `linear(inputs, kernel)` form that
`_batch_norm_folding.linear_batch_norm` folds a batch norm into.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from selfy_tf.ops import _backend


def torch_conv_initializer() -> keras.initializers.Initializer:
    """Kaiming-normal (fan-out, ReLU) as the official release initialises convolutions."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def torch_conv_transpose_initializer() -> keras.initializers.Initializer:
    """Kaiming-normal for the ConvTranspose3d written as a Conv2D `[1, 1, i, o]`.

    PyTorch computes the fan-out of a transposed convolution from its first
    weight axis, the input channels; for our `[1, 1, i, o]` kernel that is the
    Keras fan-in.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_in", distribution="untruncated_normal"
    )


def make_conv(
    filters: int,
    kernel_size: int,
    strides: int,
    name: str,
    dtype: object,
    kernel_initializer: keras.initializers.Initializer | None = None,
) -> keras.layers.Conv2D:
    """A bias-free 'valid' Conv2D (padding, when needed, is explicit)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="valid",
        use_bias=False,
        kernel_initializer=kernel_initializer or torch_conv_initializer(),
        name=name,
        dtype=dtype,
    )


def conv2d(strides: int, padding: str | int, training: bool | None = False) -> Callable[[Any, Any], Any]:
    """`linear(inputs, kernel)` of a bias-free 2-D convolution.

    `padding` is "SAME", "VALID" or an int: symmetric zero padding of both
    spatial axes (PyTorch style); `training`: the convolution is part of a
    training step, whose input gradient has a faster form on TensorFlow's CPU
    (see `selfy_tf.ops._backend.conv2d`).
    """

    def linear(inputs: Any, kernel: Any) -> Any:
        return _backend.conv2d(inputs, kernel, strides, padding, training=bool(training))

    return linear


def dim(tensor: Any, axis: int) -> Any:
    """The static size of `axis` when known, else the dynamic one."""
    static = tensor.shape[axis]
    return static if static is not None else ops.shape(tensor)[axis]


def extraction_output_size(size: int) -> int:
    """Spatial size of the STSS extraction output for a window side `size`.

    Two stride-2 (pad 1) convolutions, then a 'valid' 3x3 one.
    """
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size - 2


def same_matches_torch(size: int, kernel: int, stride: int, padding: int) -> bool:
    """Whether TF 'SAME' padding reads exactly what PyTorch's symmetric `padding` reads.

    TF pads `floor(total / 2)` before and the rest after; the result is the
    same as PyTorch's when the output size and the leading pad agree (a
    different trailing pad is never read).
    """
    torch_size = (size + 2 * padding - kernel) // stride + 1
    same_size = -(-size // stride)
    total = max((same_size - 1) * stride + kernel - size, 0)
    return torch_size == same_size and total // 2 == padding


def unrolled_conv_selection(height: int, width: int) -> np.ndarray:
    """0/1 tensor `[3, 3, height * width, height * width]` of a 3x3 pad-1 convolution.

    `selection[ky, kx, p, q]` is 1 when input position `p` meets kernel tap
    `(ky, kx)` for output position `q`, so that contracting a kernel with it
    gives the convolution as one dense matrix (useful for maps with one input
    channel, where a matrix product is much faster than a convolution).
    """
    selection = np.zeros((3, 3, height * width, height * width), np.float32)
    for out_y in range(height):
        for out_x in range(width):
            for ky in range(3):
                for kx in range(3):
                    in_y, in_x = out_y + ky - 1, out_x + kx - 1
                    if 0 <= in_y < height and 0 <= in_x < width:
                        selection[ky, kx, in_y * width + in_x, out_y * width + out_x] = 1
    return selection
