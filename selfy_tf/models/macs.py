"""Multiply-accumulate counting per clip, layer by layer.

TensorFlow's profiler counts 0 for transposed convolutions and einsums and
adds batch-norm and element-wise ops; papers count multiply-accumulates of
convolutions and fully connected layers. This module counts, for one clip:

- convolutions (1-3-D, grouped, depthwise): output positions x kernel
  volume x input channels per group x output channels;
- transposed convolutions: input positions x kernel volume x input channels
  x output channels;
- dense layers: input rows x input features x units;
- the SELFY block (`selfy_tf.layers.SELFYBlock`), counted from its
  definition (DESIGN.md §3) and its input shape, whatever kernels implement
  it: the transformation convolution, the STSS (one multiply-add per channel
  for every entry of the similarity volume), the extraction and integration
  convolutions and the kernel-1 transposed convolution (on its input
  positions).

Shapes are read while tracing the model once on a batch of one clip (no
computation runs).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import keras

from selfy_tf.layers.selfy_block import SELFYBlock

_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_CONV_TRANSPOSE = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


def _conv_output(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def selfy_block_macs(block: SELFYBlock, input_shape: tuple) -> dict[str, int]:
    """Multiply-accumulates of a SELFY block, by stage, for `[batch*T, H, W, C]` inputs."""
    batch_frames, height, width, channels = input_shape
    length, rows, cols = block.window
    hidden = block.hidden_channels
    extraction = block.extraction_channels
    integration = block.integration_channels
    map_height, map_width = _conv_output(height, 3, 2, 1), _conv_output(width, 3, 2, 1)
    positions = batch_frames * map_height * map_width
    macs = {
        "stss_transformation/conv": positions * 9 * channels * hidden,
        "stss_transformation/stss": positions * length * rows * cols * hidden,
    }
    # Extraction: per position and temporal offset, convolutions over (U, V).
    geometry = ((1, 1), (2, 1), (2, 1), (1, 0))
    size_u, size_v, in_channels = rows, cols, 1
    for index, ((stride, padding), out_channels) in enumerate(zip(geometry, extraction)):
        size_u = _conv_output(size_u, 3, stride, padding)
        size_v = _conv_output(size_v, 3, stride, padding)
        macs[f"stss_extraction/conv{index}"] = (
            positions * length * size_u * size_v * 9 * in_channels * out_channels
        )
        in_channels = out_channels
    # Integration: 3x3 convolutions over (H, W) for each temporal offset, fusion, upsampling.
    for index in range(3):
        out_channels = integration[index]
        macs[f"stss_integration/conv{index}"] = positions * length * 9 * in_channels * out_channels
        in_channels = out_channels
    macs["stss_integration/conv3_fuse"] = positions * 9 * length * in_channels * integration[3]
    macs["stss_integration/upsample"] = positions * integration[3] * channels
    return macs


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
    return 0


def _trace(function: Any, shape: tuple, dtype: str) -> None:
    """Calls `function` on a symbolic `shape` input: shapes only, nothing runs.

    TensorFlow traces a graph, JAX evaluates shapes; other backends run the
    function on zeros.
    """
    backend = keras.config.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        tf.function(function).get_concrete_function(tf.TensorSpec(shape, dtype))
    elif backend == "jax":
        import jax

        jax.eval_shape(function, jax.ShapeDtypeStruct(shape, dtype))
    else:
        function(keras.ops.zeros(shape, dtype))


def _counted(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, _CONV + _CONV_TRANSPOSE + _DEPTHWISE + (keras.layers.Dense, SELFYBlock))


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
            first_input = keras.tree.flatten(inputs)[0]
            first_output = keras.tree.flatten(outputs)[0]
            if isinstance(layer, SELFYBlock):
                stages = selfy_block_macs(layer, tuple(first_input.shape))
            else:
                stages = {"": _layer_macs(layer, tuple(first_input.shape), tuple(first_output.shape))}
            for stage, macs in stages.items():
                key = f"{layer.path}/{stage}" if stage else layer.path
                records[key] = records.get(key, 0) + int(macs)
            return outputs

        return call

    blocks = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, SELFYBlock)]
    inside_blocks = {
        id(sublayer) for block in blocks for sublayer in block._flatten_layers(include_self=False)
    }
    for layer in model._flatten_layers(include_self=False, recursive=True):
        # A SELFY block is counted as a whole, from its definition.
        if _counted(layer) and id(layer) not in inside_blocks:
            object.__setattr__(layer, "call", wrap(layer, layer.call))
            patched.append(layer)
    try:
        _trace(
            lambda clip: model(clip, training=False),
            (1, *input_shape[1:]),
            model.inputs[0].dtype,
        )
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
    if by_layer:
        return records
    return sum(records.values())
