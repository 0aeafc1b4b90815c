"""A TensorFlow 2-D convolution whose input gradient is a forward convolution.

TensorFlow's CPU kernel for the input gradient of a convolution
(`Conv2DBackpropInput`) is far slower than its forward convolution: 14-85
GFLOP/s where `Conv2D` runs at 140-170 (2-core AVX2 CPU, the layers of a
ResNet-50 at 16 x 224²). The input gradient is a convolution itself:

- at stride 1, the upstream gradient convolved with the kernel flipped in
  space and transposed (input and output channels swapped), padded by
  `kernel - 1 - padding`;
- at stride `s`, each of the `s * s` phases of the input (rows `y ≡ r_y`,
  columns `x ≡ r_x` mod `s`) reads the upstream gradient through the
  sub-kernel `kernel[r_y::s, r_x::s]` alone, so the input gradient is `s * s`
  stride-1 convolutions with the same multiply-adds as the gradient, their
  outputs interleaved.

`conv2d` computes it so (the same products as TensorFlow's, summed in
another order) and keeps `Conv2DBackpropFilter` for the kernel gradient.
Where it pays and what it changes: docs/architecture.md, "Convolution
gradients in training".
"""

from __future__ import annotations

import functools
from typing import Any

import tensorflow as tf

__all__ = ["conv2d", "supports", "tensorflow_padding"]


def _axis_padding(padding: str | int, size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Zero padding `(before, after)` of one spatial axis, as TensorFlow applies it."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def tensorflow_padding(padding: str | int) -> str | list[list[int]]:
    """`tf.nn.conv2d`'s padding for "SAME", "VALID" or a symmetric int (explicit pads)."""
    if isinstance(padding, str):
        return padding
    return [[0, 0], [padding, padding], [padding, padding], [0, 0]] if padding else "VALID"


def _flipped(kernel: tf.Tensor) -> tf.Tensor:
    """`kernel` rotated by 180° in space, input and output channels swapped."""
    return tf.transpose(tf.reverse(kernel, [0, 1]), [0, 1, 3, 2])


def _input_gradient(upstream, kernel, input_size, stride, pads):
    """The gradient of `conv2d(pad(x), kernel, stride, VALID)` with respect to `x`."""
    (kernel_h, kernel_w), channels = kernel.shape[:2], kernel.shape[2]
    (before_h, after_h), (before_w, after_w) = pads
    if stride == 1:
        paddings = [
            [0, 0],
            [kernel_h - 1 - before_h, kernel_h - 1 - after_h],
            [kernel_w - 1 - before_w, kernel_w - 1 - after_w],
            [0, 0],
        ]
        return tf.nn.conv2d(upstream, _flipped(kernel), 1, paddings)
    out_h, out_w = upstream.shape[1:3]
    # Phase (r_y, r_x) of the padded input: rows q * stride + r_y, q < rows.
    rows = -(-(input_size[0] + before_h + after_h) // stride)
    columns = -(-(input_size[1] + before_w + after_w) // stride)
    phase_rows = []
    for row_phase in range(stride):
        phases = []
        for column_phase in range(stride):
            sub_kernel = kernel[row_phase::stride, column_phase::stride]
            taps_h, taps_w = sub_kernel.shape[:2]
            if not taps_h or not taps_w:
                phases.append(tf.zeros([tf.shape(upstream)[0], rows, columns, channels], upstream.dtype))
                continue
            # phase[q] = sum_j upstream[q - j] * sub_kernel[j]: a full correlation
            # with the flipped sub-kernel, cut to the phase's length.
            paddings = [
                [0, 0],
                [taps_h - 1, max(rows - out_h, 0)],
                [taps_w - 1, max(columns - out_w, 0)],
                [0, 0],
            ]
            phase = tf.nn.conv2d(upstream, _flipped(sub_kernel), 1, paddings)
            phases.append(phase[:, :rows, :columns])
        phase_rows.append(tf.stack(phases, axis=3))
    padded = tf.reshape(tf.stack(phase_rows, axis=2), [-1, rows * stride, columns * stride, channels])
    return padded[:, before_h : before_h + input_size[0], before_w : before_w + input_size[1]]


def _kernel_gradient(inputs, upstream, kernel_shape, stride, tf_padding):
    """The gradient of the convolution with respect to its kernel: TensorFlow's kernel.

    Written as a forward convolution too (input and upstream gradient with
    batch and channel axes swapped), it saved 25 % of this op at 3x3, but its
    rounding moved a 5-step SGD run from the official weights off PyTorch's
    float32 path onto another one (benchmarks/README.md, "Training"), where
    TensorFlow's kernel and the forward input gradient stay on it.
    """
    explicit = not isinstance(tf_padding, str)
    return tf.raw_ops.Conv2DBackpropFilter(
        input=inputs,
        filter_sizes=kernel_shape,
        out_backprop=upstream,
        strides=[1, stride, stride, 1],
        padding="EXPLICIT" if explicit else tf_padding,
        explicit_paddings=sum(tf_padding, []) if explicit else [],
    )


@functools.lru_cache(maxsize=None)
def _on_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


# Below these sizes TensorFlow's kernel is as fast, and the extra ops of the
# forward form cost more than they save (a tiny model's training step was
# 27 % slower with both gradients of every convolution converted).
MIN_MULTIPLY_ADDS_PER_EXAMPLE = 1 << 20
MIN_CHANNEL_PRODUCT = 1 << 16


def supports(inputs: Any, kernel: Any, strides: Any, padding: str | int) -> bool:
    """Whether `conv2d` should compute this convolution's input gradient.

    It does on CPU-only TensorFlow, for square strides, static spatial and
    channel sizes and paddings below the kernel size, where the forward
    form is the faster one (measured on a 2-core AVX2 CPU, ResNet layer
    geometries at 7²-56² and 16-256 channels, 1x1 and 3x3): stride-1
    convolutions of at least 2^20 multiply-adds per example, and any
    convolution of at least 2^16 input x output channels. Smaller stride-1
    and narrower strided convolutions keep TensorFlow's kernel (its input
    gradient is up to 2x faster there), as do GPUs (cuDNN).
    """
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    shapes = tuple(inputs.shape[1:]) + tuple(kernel.shape)
    if len(set(strides)) != 1 or None in shapes or _on_gpu():
        return False
    if not isinstance(padding, str) and padding >= min(kernel.shape[:2]):
        return False
    kernel_h, kernel_w, channels, filters = kernel.shape
    height, width = inputs.shape[1:3]
    multiply_adds = height * width * channels * filters * kernel_h * kernel_w / strides[0] ** 2
    return (strides[0] == 1 and multiply_adds >= MIN_MULTIPLY_ADDS_PER_EXAMPLE) or (
        channels * filters >= MIN_CHANNEL_PRODUCT
    )


def conv2d(inputs: Any, kernel: Any, strides: int, padding: str | int) -> tf.Tensor:
    """`tf.nn.conv2d` of channels-last `inputs`, its input gradient a forward convolution.

    Args:
        inputs: `[batch, height, width, channels]` with static height, width
            and channels (see `supports`).
        kernel: `[kernel_h, kernel_w, channels, filters]`.
        strides: the stride of both spatial axes.
        padding: "SAME", "VALID" or an int: symmetric zero padding of both
            spatial axes (PyTorch style).

    Returns:
        The convolution, equal to `tf.nn.conv2d`'s; its gradients equal
        TensorFlow's up to the order of float summation.
    """
    tf_padding = tensorflow_padding(padding)

    @tf.custom_gradient
    def convolution(inputs, kernel):
        outputs = tf.nn.conv2d(inputs, kernel, strides, tf_padding)

        def gradient(upstream):
            input_size = tuple(inputs.shape[1:3])
            pads = tuple(
                _axis_padding(padding, size, kernel_size, strides)
                for size, kernel_size in zip(input_size, kernel.shape[:2])
            )
            return (
                _input_gradient(upstream, kernel, input_size, strides, pads),
                _kernel_gradient(inputs, upstream, kernel.shape, strides, tf_padding),
            )

        return outputs, gradient

    return convolution(tf.convert_to_tensor(inputs), tf.convert_to_tensor(kernel))
