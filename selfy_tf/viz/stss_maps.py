"""The STSS a model computes for a clip, and its maps at a query point.

For a SELFY model this is the block's own STSS: the block's input, reduced
by its transformation layer, compared over the block's window. For a model
without a SELFY block it is the STSS of a backbone feature map (by default
the output of stage res3, where the block would sit) with window (5, 9, 9).

Example:

>>> from selfy_tf.models import create_model
>>> model = create_model("selfy_tsm_r18", num_classes=3, num_frames=4,
...                      input_size=64, width_multiplier=0.125, selfy_channels=8)
>>> result = model_stss(model, np.zeros((4, 64, 64, 3), np.uint8))
>>> result.similarity.shape
(1, 4, 4, 4, 5, 9, 9)
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = (5, 9, 9)


@dataclasses.dataclass
class ModelSTSS:
    """The STSS of one clip inside a model.

    Attributes:
        similarity: `[1, num_frames, height, width, L, U, V]`.
        source: where it came from, e.g. `"SELFY block 'selfy'"` or
            `"features of layer 'layer2_1_relu'"`.
        stride: input pixels per STSS cell (frame size / STSS map size).
    """

    similarity: np.ndarray
    source: str
    stride: float


def find_selfy_block(model: keras.Model):
    """The model's first `SELFYBlock` layer, or None."""
    from selfy_tf.layers.selfy_block import SELFYBlock

    for layer in model.layers:
        if isinstance(layer, SELFYBlock):
            return layer
    return None


def _default_feature_layer(model: keras.Model) -> str:
    names = [layer.name for layer in model.layers if re.fullmatch(r"layer2_\d+_relu", layer.name)]
    if names:
        return names[-1]
    for layer in reversed(model.layers):
        try:
            if len(layer.output.shape) == 4:
                return layer.name
        except (AttributeError, ValueError):
            continue
    raise ValueError(
        f"Model {model.name!r} has no 4-D feature layer to compute an STSS from. "
        "Pass `layer_name`."
    )


def model_stss(
    model: keras.Model,
    frames: np.ndarray,
    layer_name: str | None = None,
    window: Sequence[int] = DEFAULT_WINDOW,
) -> ModelSTSS:
    """Computes the STSS a model sees for a clip.

    Args:
        model: functional video classifier over `[batch, num_frames, height,
            width, 3]` frames.
        frames: `[num_frames, height, width, 3]` at the model's input size.
        layer_name: feature layer for models without a SELFY block (default:
            the last block of stage res3); ignored for SELFY models.
        window: STSS window for models without a SELFY block.

    Returns:
        A `ModelSTSS`.
    """
    from selfy_tf import ops

    frames = np.asarray(frames, np.float32)
    if frames.ndim != 4:
        raise ValueError(
            "`frames` must be [num_frames, height, width, 3]. "
            f"Received: shape={frames.shape}."
        )
    num_frames = frames.shape[0]
    block = find_selfy_block(model)
    if block is not None:
        probe = keras.Model(model.input, block.input)
        block_input = probe(frames[None], training=False)
        similarity = block.stss_transformation(block_input, training=False)
        source = f"SELFY block {block.name!r}"
    else:
        layer_name = layer_name or _default_feature_layer(model)
        probe = keras.Model(model.input, model.get_layer(layer_name).output)
        features = probe(frames[None], training=False)
        features = tf.reshape(features, [1, num_frames, *features.shape[1:]])
        similarity = ops.stss(features, window=tuple(window))
        source = f"features of layer {layer_name!r}"
    similarity = np.asarray(similarity, np.float32)
    stride = frames.shape[1] / similarity.shape[2]
    logger.debug("STSS %s from %s (stride %.1f px)", similarity.shape, source, stride)
    return ModelSTSS(similarity=similarity, source=source, stride=stride)


def query_maps(similarity: np.ndarray, frame_index: int, row: int, column: int) -> np.ndarray:
    """The `[L, U, V]` similarity maps of one query position.

    Args:
        similarity: `[batch, num_frames, height, width, L, U, V]` (batch
            index 0 is used) or `[num_frames, height, width, L, U, V]`.
        frame_index, row, column: the query position in STSS cells.

    Raises:
        ValueError: if the position is outside the STSS volume.
    """
    similarity = np.asarray(similarity)
    if similarity.ndim == 7:
        similarity = similarity[0]
    num_frames, height, width = similarity.shape[:3]
    for name, value, size in (
        ("frame_index", frame_index, num_frames),
        ("row", row, height),
        ("column", column, width),
    ):
        if not 0 <= value < size:
            raise ValueError(
                f"Query `{name}` must be in [0, {size}). Received: {name}={value} "
                f"(STSS volume {num_frames} frames x {height} x {width})."
            )
    return similarity[frame_index, row, column]
