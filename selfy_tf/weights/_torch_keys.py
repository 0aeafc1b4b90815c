"""PyTorch state-dict keys of each block of the zoo and their layout transforms.

One function per block kind lists `WeightMapping(variable, torch_key,
transform)` records for that block; `selfy_tf.weights.mapping` walks a model
and calls them. Layers know nothing of PyTorch keys: these functions read the
sub-layers the Keras blocks are built from.

Layout transforms (`TORCH_TRANSFORMS`):

| transform               | PyTorch tensor          | Keras variable        |
| ----------------------- | ----------------------- | --------------------- |
| `conv2d`                | Conv2d `[o, i, kh, kw]` | Conv2D `[kh, kw, i, o]` |
| `conv3d_1kk`            | Conv3d `[o, i, 1, kh, kw]` | Conv2D `[kh, kw, i, o]` |
| `conv_transpose3d_k1`   | ConvTranspose3d `[i, o, 1, 1, 1]` | Conv2D `[1, 1, i, o]` |
| `linear`                | Linear `[o, i]` / Conv1d `[o, i, 1]` | Dense `[i, o]` |
| `identity`              | BN `weight`, `bias`, `running_mean`, `running_var` | `gamma`, `beta`, `moving_mean`, `moving_variance` |

Every (1, k, k) 3-D convolution of the reference is a 2-D convolution here
(the frame / window axis is folded into the batch), so 3-D kernels lose their
leading unit axis.

The SELFY block (`selfy_block_mapping`), with the official prefix
`module.base_model.selfy.`:

| Keras variable (layer path)                         | PyTorch key (after prefix)                | transform             |
| --------------------------------------------------- | ----------------------------------------- | --------------------- |
| `stss_transformation/downsample_conv/kernel` `[3, 3, d_in, d_hid]` | `stss_transformation.downsample.0.weight` `[d_hid, d_in, 3, 3]` | `conv2d` |
| `stss_transformation/downsample_bn/{gamma,beta,moving_mean,moving_variance}` | `stss_transformation.downsample.1.{weight,bias,running_mean,running_var}` | `identity` |
| `stss_extraction/conv{i}/kernel` `[3, 3, i, o]`, i = 0..3 | `stss_extraction.conv{i}.0.weight` `[o, i, 1, 3, 3]` | `conv3d_1kk` |
| `stss_extraction/conv{i}_bn/*`                      | `stss_extraction.conv{i}.1.*`             | `identity` |
| `stss_integration/conv{i}/kernel` `[3, 3, i, o]`, i = 0..2 | `stss_integration.conv{i}.0.weight` `[o, i, 1, 3, 3]` | `conv3d_1kk` |
| `stss_integration/conv{i}_bn/*`                     | `stss_integration.conv{i}.1.*`            | `identity` |
| `stss_integration/conv3_fuse/kernel` `[3, 3, L*64, 64]` | `stss_integration.conv3_fuse.1.weight` `[64, L*64, 1, 3, 3]` | `conv3d_1kk` |
| `stss_integration/conv3_fuse_bn/*`                  | `stss_integration.conv3_fuse.2.*`         | `identity` |
| `stss_integration/upsample_conv/kernel` `[1, 1, 64, d_in]` | `stss_integration.upsample.0.weight` `[64, d_in, 1, 1, 1]` | `conv_transpose3d_k1` |
| `stss_integration/upsample_bn/*`                    | `stss_integration.upsample.1.*`           | `identity` |
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import numpy as np

from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.stss_extraction import STSSExtraction
from selfy_tf.layers.stss_integration import STSSIntegration
from selfy_tf.layers.stss_transformation import STSSTransformation

# The official prefix of the SELFY block's keys in a SELFYNet state dict.
SELFY_BLOCK_PREFIX = "module.base_model.selfy."

# Suffix of PyTorch BatchNorm keys that have no Keras counterpart (the step
# counter, used only when PyTorch's BN momentum is None).
BATCH_NORM_SKIPPED_SUFFIX = "num_batches_tracked"

_BATCH_NORM_KEYS = (
    ("gamma", "weight"),
    ("beta", "bias"),
    ("moving_mean", "running_mean"),
    ("moving_variance", "running_var"),
)


def _conv2d(array: np.ndarray) -> np.ndarray:
    return np.transpose(array, (2, 3, 1, 0))


def _conv3d_1kk(array: np.ndarray) -> np.ndarray:
    if array.ndim != 5 or array.shape[2] != 1:
        raise ValueError(
            "A (1, k, k) Conv3d weight must have shape (out, in, 1, k, k). "
            f"Received: shape={tuple(array.shape)}."
        )
    return np.transpose(array[:, :, 0], (2, 3, 1, 0))


def _conv_transpose3d_k1(array: np.ndarray) -> np.ndarray:
    if array.ndim != 5 or array.shape[2:] != (1, 1, 1):
        raise ValueError(
            "A kernel-1 ConvTranspose3d weight must have shape (in, out, 1, 1, 1). "
            f"Received: shape={tuple(array.shape)}."
        )
    return array[:, :, 0, 0, 0][None, None]


def _linear(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(
            "A Linear / kernel-1 Conv1d weight must have shape (out, in) or (out, in, 1). "
            f"Received: shape={tuple(array.shape)}."
        )
    return np.transpose(array)


def _identity(array: np.ndarray) -> np.ndarray:
    return array


TORCH_TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv2d": _conv2d,
    "conv3d_1kk": _conv3d_1kk,
    "conv_transpose3d_k1": _conv_transpose3d_k1,
    "linear": _linear,
    "identity": _identity,
}


@dataclasses.dataclass(frozen=True)
class WeightMapping:
    """One Keras variable and the PyTorch state-dict entry it comes from.

    Attributes:
        variable: the Keras variable.
        torch_key: the full PyTorch state-dict key.
        transform: name of the layout transform in `TORCH_TRANSFORMS`.
    """

    variable: keras.Variable
    torch_key: str
    transform: str

    def convert(self, array: np.ndarray) -> np.ndarray:
        """Returns the PyTorch `array` in the layout of `variable`.

        Raises:
            ValueError: if the converted shape differs from the variable's.
        """
        converted = TORCH_TRANSFORMS[self.transform](np.asarray(array))
        if tuple(converted.shape) != tuple(self.variable.shape):
            raise ValueError(
                f"`{self.torch_key}` of shape {tuple(np.shape(array))} converted with "
                f"`{self.transform}` has shape {tuple(converted.shape)}, but "
                f"`{self.variable.path}` expects {tuple(self.variable.shape)}."
            )
        return converted


def batch_norm_mapping(
    batch_norm: keras.layers.BatchNormalization, prefix: str
) -> list[WeightMapping]:
    """Records of a BatchNorm module `prefix` (`{prefix}.weight`, ...)."""
    return [
        WeightMapping(getattr(batch_norm, keras_name), f"{prefix}.{torch_name}", "identity")
        for keras_name, torch_name in _BATCH_NORM_KEYS
    ]


def dense_mapping(dense: keras.layers.Dense, prefix: str) -> list[WeightMapping]:
    """Records of a Linear (or kernel-1 Conv1d) module `prefix` with a bias."""
    return [
        WeightMapping(dense.kernel, f"{prefix}weight", "linear"),
        WeightMapping(dense.bias, f"{prefix}bias", "identity"),
    ]


def conv_bn_mapping(
    conv: keras.layers.Layer,
    batch_norm: keras.layers.Layer,
    conv_key: str,
    batch_norm_prefix: str,
    transform: str,
) -> list[WeightMapping]:
    """Records of one convolution kernel and the batch norm after it."""
    return [WeightMapping(conv.kernel, conv_key, transform)] + batch_norm_mapping(
        batch_norm, batch_norm_prefix
    )


def _numbered_conv_bn_mapping(
    layer: STSSExtraction | STSSIntegration, prefix: str
) -> list[WeightMapping]:
    """Records of `layer.convs[i]` / `layer.bns[i]` as `conv{i}.0` / `conv{i}.1` (Conv3d, BN3d)."""
    records = []
    for index, (conv, bn) in enumerate(zip(layer.convs, layer.bns)):
        records += conv_bn_mapping(
            conv, bn, f"{prefix}conv{index}.0.weight",
            f"{prefix}conv{index}.1", "conv3d_1kk",
        )
    return records


def stss_transformation_mapping(
    layer: STSSTransformation, prefix: str
) -> list[WeightMapping]:
    """Records of an `STSSTransformation`.

    Args:
        layer: a built `STSSTransformation`.
        prefix: key prefix of the official module, e.g.
            `"module.base_model.selfy.stss_transformation."`.

    Returns:
        Records for `downsample.0` (Conv2d `[o, i, 3, 3]` → Conv2D kernel
        `[3, 3, i, o]`) and `downsample.1` (BatchNorm2d).
    """
    return conv_bn_mapping(
        layer.conv, layer.bn, f"{prefix}downsample.0.weight",
        f"{prefix}downsample.1", "conv2d",
    )


def stss_extraction_mapping(layer: STSSExtraction, prefix: str) -> list[WeightMapping]:
    """Records of an `STSSExtraction`.

    Args:
        layer: a built `STSSExtraction`.
        prefix: key prefix of the official module, e.g.
            `"module.base_model.selfy.stss_extraction."`.

    Returns:
        Records for `conv{i}.0` (Conv3d `[o, i, 1, 3, 3]` → Conv2D kernel
        `[3, 3, i, o]`) and `conv{i}.1` (BatchNorm3d), i = 0..3.
    """
    return _numbered_conv_bn_mapping(layer, prefix)


def stss_integration_mapping(layer: STSSIntegration, prefix: str) -> list[WeightMapping]:
    """Records of an `STSSIntegration`.

    Args:
        layer: a built `STSSIntegration`.
        prefix: key prefix of the official module, e.g.
            `"module.base_model.selfy.stss_integration."`.

    Returns:
        Records for `conv{i}.0` (Conv3d `[o, i, 1, 3, 3]` → Conv2D kernel
        `[3, 3, i, o]`) and `conv{i}.1` for i = 0, 1, 2; `conv3_fuse.1`
        (Conv3d `[o, L * i, 1, 3, 3]`, same transform) and `conv3_fuse.2`;
        `upsample.0` (ConvTranspose3d `[i, o, 1, 1, 1]` → Conv2D kernel
        `[1, 1, i, o]`) and `upsample.1`.
    """
    records = _numbered_conv_bn_mapping(layer, prefix)
    records += conv_bn_mapping(
        layer.fuse_conv, layer.fuse_bn, f"{prefix}conv3_fuse.1.weight",
        f"{prefix}conv3_fuse.2", "conv3d_1kk",
    )
    records += conv_bn_mapping(
        layer.upsample_conv, layer.upsample_bn, f"{prefix}upsample.0.weight",
        f"{prefix}upsample.1", "conv_transpose3d_k1",
    )
    return records


def selfy_block_mapping(
    block: SELFYBlock, prefix: str = SELFY_BLOCK_PREFIX
) -> list[WeightMapping]:
    """Records mapping every variable of a SELFY block to an official PyTorch key.

    Args:
        block: a built `SELFYBlock`.
        prefix: prefix of the block's keys in the PyTorch state dict,
            default `"module.base_model.selfy."`.

    Returns:
        One `WeightMapping(variable, torch_key, transform)` per variable
        (the table in the module docstring); `record.convert(array)` turns
        the PyTorch tensor into the variable's layout.

    Raises:
        ValueError: if the block is not built yet.
    """
    if not block.built:
        raise ValueError(
            "`selfy_block_mapping` needs a built `SELFYBlock`: call it on "
            "an input or call `build(input_shape)` first."
        )
    return (
        stss_transformation_mapping(block.stss_transformation, f"{prefix}stss_transformation.")
        + stss_extraction_mapping(block.stss_extraction, f"{prefix}stss_extraction.")
        + stss_integration_mapping(block.stss_integration, f"{prefix}stss_integration.")
    )


def selfy_block_skipped_keys(
    block: SELFYBlock, prefix: str = SELFY_BLOCK_PREFIX
) -> list[str]:
    """PyTorch keys of a SELFY block that have no Keras variable, on purpose.

    These are the `num_batches_tracked` counters of its batch norms.

    Raises:
        ValueError: if the block is not built yet.
    """
    keys = []
    for record in selfy_block_mapping(block, prefix):
        if record.torch_key.endswith(".running_mean"):
            keys.append(record.torch_key[: -len("running_mean")] + BATCH_NORM_SKIPPED_SUFFIX)
    return keys
