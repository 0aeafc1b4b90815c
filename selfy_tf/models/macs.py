"""Multiply-accumulate counting per clip, layer by layer.

TensorFlow's profiler counts 0 for transposed convolutions and einsums and
adds batch-norm and element-wise ops; papers count multiply-accumulates of
convolutions and fully connected layers. This module counts, for one clip:

- convolutions (1-3-D, grouped, depthwise): output positions x kernel
  volume x input channels per group x output channels;
- transposed convolutions: input positions x kernel volume x input channels
  x output channels;
- dense layers: input rows x input features x units;
- the STSS of a SELFY block (`selfy_tf.layers.STSSTransformation`): one
  multiply-add per channel for every entry of the similarity volume.

Shapes are read while tracing the model once on a batch of one clip (no
computation runs), so nested layers such as the SELFY block are included.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import keras
import tensorflow as tf

from selfy_tf.layers.stss_transformation import STSSTransformation

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _is_stss_layer(layer: keras.layers.Layer) -> bool:
    # The STSS transformation computes the similarity volume
    # [batch, frames, height, width, L, U, V] from `hidden_channels` features.
    return isinstance(layer, STSSTransformation)


def _layer_macs(layer: keras.layers.Layer, input_shape: tuple, output_shape: tuple) -> int:
    if isinstance(layer, _DEPTHWISE):
        kernel = math.prod(layer.kernel_size)
        return math.prod(output_shape[:-1]) * kernel * input_shape[-1] * layer.depth_multiplier
    if isinstance(layer, _CONV_TRANSPOSE):
        kernel = math.prod(layer.kernel_size)
        return math.prod(input_shape[:-1]) * kernel * input_shape[-1] * layer.filters
    if isinstance(layer, _CONV):
        kernel = math.prod(layer.kernel_size)
        return math.prod(output_shape[:-1]) * kernel * (input_shape[-1] // layer.groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return math.prod(input_shape) * layer.units
    if _is_stss_layer(layer):
        return math.prod(output_shape) * layer.hidden_channels
    return 0


def _counted(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _CONV + _CONV_TRANSPOSE + _DEPTHWISE + (keras.layers.Dense,)) or _is_stss_layer(layer)


def count_macs(model: keras.Model, by_layer: bool = False) -> int | dict[str, int]:
    """Counts the multiply-accumulates of `model` for one input clip.

    Args:
        model: a built model with one input whose shape, apart from the batch
            axis, is fully known (all models of the zoo).
        by_layer: return a dict `{layer path: MACs}` instead of the total.

    Returns:
        The total multiply-accumulates for a batch of one, or a dict per
        layer (a layer called several times is summed).

    Raises:
        ValueError: if the input shape is not fully known.
    """
    input_shape = tuple(model.inputs[0].shape)
    if any(size is None for size in input_shape[1:]):
        raise ValueError(
            "`count_macs` needs a model whose input shape is known apart from the "
            f"batch axis. Received: input shape {input_shape}."
        )
    records: dict[str, int] = {}
    patched = []

    def wrap(layer, original):
        @functools.wraps(original)
        def call(inputs, *args: Any, **kwargs: Any):
            outputs = original(inputs, *args, **kwargs)
            first_input = tf.nest.flatten(inputs)[0]
            first_output = tf.nest.flatten(outputs)[0]
            macs = _layer_macs(layer, tuple(first_input.shape), tuple(first_output.shape))
            records[layer.path] = records.get(layer.path, 0) + int(macs)
            return outputs

        return call

    for layer in model._flatten_layers(include_self=False, recursive=True):
        if _counted(layer):
            object.__setattr__(layer, "call", wrap(layer, layer.call))
            patched.append(layer)
    try:
        spec = tf.TensorSpec((1, *input_shape[1:]), model.inputs[0].dtype)
        # Tracing only: shapes are static for a batch of one, nothing runs.
        tf.function(lambda clip: model(clip, training=False)).get_concrete_function(spec)
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
    if by_layer:
        return records
    return sum(records.values())
