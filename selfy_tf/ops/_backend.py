"""The Keras backend in use, and the few primitives whose TensorFlow form matters.

The package is written in `keras.ops` and runs on every Keras backend that
has `keras.ops.custom_gradient` (TensorFlow and JAX). A handful of
primitives keep a TensorFlow-specific form on TensorFlow: the exact ops that
TensorFlow's graph optimiser fuses (convolution + BiasAdd + ReLU), that the
TFLite converter maps to builtins (Gather, BatchMatMul with transposed
operands) and that convolve with explicit padding without writing a padded
copy. On other backends the same primitives are plain `keras.ops`.

TensorFlow is imported only inside the TensorFlow branches, so importing the
package under `KERAS_BACKEND=jax` never imports TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import keras
import numpy as np
from keras import ops


def is_tensorflow() -> bool:
    """Whether Keras runs on TensorFlow (`keras.config.backend()`)."""
    return keras.config.backend() == "tensorflow"


def require_tensorflow(feature: str) -> None:
    """Raises a ValueError naming `feature` unless Keras runs on TensorFlow."""
    if not is_tensorflow():
        raise ValueError(
            f"{feature} needs the TensorFlow backend of Keras "
            f"(KERAS_BACKEND=tensorflow); Keras runs on {keras.config.backend()!r}."
        )


@functools.lru_cache(maxsize=None)
def xla_compiled(function: Callable) -> Callable:
    """`function` as an inner XLA-compiled `tf.function` on TensorFlow.

    Other backends compile whole steps (`jax.jit`), so `function` is
    returned unchanged there. One compiled function per `function`. An inner XLA function is saved into
    SavedModels as `_XlaMustCompile`: use it only on paths that exported
    inference graphs do not take.
    """
    if not is_tensorflow():
        return function
    import tensorflow as tf

    return tf.function(function, jit_compile=True, autograph=False)


def matmul(a: Any, b: Any, transpose_a: bool = False, transpose_b: bool = False) -> Any:
    """Batched matrix product with optionally transposed operands.

    On TensorFlow one `BatchMatMulV2` with its adjoint flags (a TFLite
    builtin, and no transpose copy in eager mode).
    """
    if is_tensorflow():
        import tensorflow as tf

        return tf.linalg.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)
    if transpose_a:
        a = ops.swapaxes(a, -1, -2)
    if transpose_b:
        b = ops.swapaxes(b, -1, -2)
    return ops.matmul(a, b)


def take(params: Any, indices: np.ndarray, axis: int) -> Any:
    """Gathers static, in-range `indices` along `axis`.

    On TensorFlow one `GatherV2` (`keras.ops.take` adds a negative-index
    fix-up over the whole index table).
    """
    if is_tensorflow():
        import tensorflow as tf

        return tf.gather(params, indices, axis=axis)
    return ops.take(params, indices, axis=axis)


def bias_add(inputs: Any, bias: Any) -> Any:
    """Adds a per-channel `bias` to channels-last `inputs`.

    On TensorFlow a `BiasAdd`, which the CPU graph optimiser fuses into the
    convolution or matrix product before it.
    """
    if is_tensorflow():
        import tensorflow as tf

        return tf.nn.bias_add(inputs, bias)
    return ops.add(inputs, bias)


def squared_difference(a: Any, b: Any) -> Any:
    """`(a - b) ** 2`, element-wise with broadcasting.

    On TensorFlow one `SquaredDifference` kernel, which writes no `a - b`
    temporary.
    """
    if is_tensorflow():
        import tensorflow as tf

        return tf.math.squared_difference(a, b)
    return ops.square(ops.subtract(a, b))


def conv2d(inputs: Any, kernel: Any, strides: int, padding: str | int, training: bool = False) -> Any:
    """Bias-free channels-last 2-D convolution.

    `padding` is "SAME", "VALID" or an int: symmetric zero padding of both
    spatial axes (PyTorch style). On TensorFlow the int is given to the
    convolution as explicit padding, so that no padded copy of the input is
    written; elsewhere the input is zero-padded first (XLA fuses the pad).
    With `training`, on TensorFlow on CPU, the input gradient of a large
    convolution is computed with forward convolutions
    (`selfy_tf.ops._conv_gradient`: TensorFlow's own CPU kernel is up to
    several times slower); inference graphs keep the plain convolution.
    """
    if is_tensorflow():
        import tensorflow as tf

        from selfy_tf.ops import _conv_gradient

        if training and _conv_gradient.supports(inputs, kernel, strides, padding):
            return _conv_gradient.conv2d(inputs, kernel, strides, padding)
        return tf.nn.conv2d(inputs, kernel, strides, _conv_gradient.tensorflow_padding(padding))
    if not isinstance(padding, str):
        if padding:
            inputs = ops.pad(
                inputs, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
            )
        padding = "VALID"
    return ops.conv(inputs, kernel, strides=strides, padding=padding.lower())
