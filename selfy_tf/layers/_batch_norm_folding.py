"""Batch norm at inference as a per-channel affine map, folded into the linear map before it.

At inference a batch norm is `y = x * s + (beta - mean * s)` with
`s = gamma / sqrt(variance + epsilon)`, so a bias-free convolution (or
matrix product) followed by one equals the same map with its output
channels' kernels scaled by `s`, plus that bias. The layers fold at run
time (`folded_batch_norm`, `linear_batch_norm`, in `keras.ops`);
`selfy_tf.models.fold_batch_norms` folds whole models ahead of time
(`fold_into_conv`, in NumPy).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
from keras import ops

from selfy_tf.ops import _backend


def folded_batch_norm(
    batch_norm: keras.layers.BatchNormalization,
) -> tuple[Any, Any]:
    """`(scale, bias)` in float32 with `batch_norm(x) == x * scale + bias` at inference."""
    scale = ops.rsqrt(ops.cast(batch_norm.moving_variance, "float32") + batch_norm.epsilon)
    if batch_norm.scale:
        scale = scale * ops.cast(batch_norm.gamma, "float32")
    bias = -ops.cast(batch_norm.moving_mean, "float32") * scale
    if batch_norm.center:
        bias = bias + ops.cast(batch_norm.beta, "float32")
    return scale, bias


def linear_batch_norm(
    inputs: Any,
    linear: Callable[[Any, Any], Any],
    kernel: keras.Variable,
    batch_norm: keras.layers.BatchNormalization,
    training: bool | None,
    relu: bool = True,
    compute_dtype: str = "float32",
    flat_map_shape: tuple[int, int] | None = None,
) -> Any:
    """`relu(batch_norm(linear(inputs, kernel)))` for a bias-free linear map.

    With batch statistics (training a trainable batch norm) the batch norm
    layer is called. Otherwise its moving statistics are folded into the
    kernel (`kernel * scale`, then a bias), which gives the same result with
    one pass less over the output and lets the graph optimiser fuse the
    bias and ReLU into the convolution or matrix product.

    Args:
        inputs: input tensor of `linear`.
        linear: `linear(inputs, kernel)`, linear in `kernel`, whose last
            axis is the output channel axis.
        kernel: the kernel variable, output channels last.
        batch_norm: a built channels-last batch norm layer.
        training: whether batch statistics are used (with a trainable
            `batch_norm`).
        relu: apply a ReLU at the end.
        compute_dtype: dtype of `inputs` and of the result.
        flat_map_shape: `(height, width)` when `linear` returns whole maps
            flattened, `[rows, height * width * channels]` (channels
            fastest), e.g. a convolution written as one matrix product. The
            result is then `[rows, height, width, channels]`; at inference the
            bias and ReLU are applied before the reshape, so they fuse into
            the matrix product.

    Returns:
        The normalised (and rectified) output of `linear`.
    """
    map_shape = None if flat_map_shape is None else [-1, *flat_map_shape, kernel.shape[-1]]
    if training and batch_norm.trainable:
        outputs = linear(inputs, ops.cast(kernel, compute_dtype))
        if map_shape is not None:
            outputs = ops.reshape(outputs, map_shape)
        outputs = batch_norm(outputs, training=True)
        return ops.relu(outputs) if relu else outputs
    scale, bias = folded_batch_norm(batch_norm)
    folded = ops.cast(ops.cast(kernel, "float32") * scale, compute_dtype)
    if map_shape is not None:
        bias = ops.tile(bias, [flat_map_shape[0] * flat_map_shape[1]])
    outputs = _backend.bias_add(linear(inputs, folded), ops.cast(bias, compute_dtype))
    outputs = ops.relu(outputs) if relu else outputs
    return outputs if map_shape is None else ops.reshape(outputs, map_shape)


def fold_into_conv(
    conv: keras.layers.Conv2D, norm: keras.layers.BatchNormalization
) -> tuple[np.ndarray, np.ndarray]:
    """Float32 `(kernel, bias)` of `conv` with the batch norm after it folded in.

    Computed in float64 and rounded once, so that the folded weights are as
    close to the original pair as float32 allows.
    """
    channels = conv.filters
    gamma = np.asarray(norm.gamma, np.float64) if norm.scale else np.ones(channels)
    beta = np.asarray(norm.beta, np.float64) if norm.center else np.zeros(channels)
    mean = np.asarray(norm.moving_mean, np.float64)
    variance = np.asarray(norm.moving_variance, np.float64)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    kernel = np.asarray(conv.kernel, np.float64) * scale
    bias = beta - mean * scale
    if conv.use_bias:
        bias = bias + np.asarray(conv.bias, np.float64) * scale
    return kernel.astype(np.float32), bias.astype(np.float32)
