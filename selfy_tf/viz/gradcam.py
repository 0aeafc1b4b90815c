"""Grad-CAM over the frames of a clip.

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a
convolutional feature map by the spatial mean of the class score's gradient
and keeps the positive part of the weighted sum. The models of this package
fold frames into the batch, so the feature map is `[batch * num_frames, h, w,
channels]` and Grad-CAM gives one map per frame; the maps of a clip share one
normalisation so that frames compare.

Example:

>>> from selfy_tf.models import create_model
>>> model = create_model("tsm_r18", num_classes=3, num_frames=2, input_size=32,
...                      width_multiplier=0.125)
>>> frames = np.zeros((2, 32, 32, 3), np.uint8)
>>> grad_cam(model, frames).maps.shape
(2, 32, 32)
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class GradCAMResult:
    """Grad-CAM of one clip.

    Attributes:
        maps: `[num_frames, height, width]` in [0, 1], at the frames' size.
        class_index: the class explained.
        probabilities: `[num_classes]` softmax of the model's logits.
        layer_name: the feature layer used.
    """

    maps: np.ndarray
    class_index: int
    probabilities: np.ndarray
    layer_name: str


def find_gradcam_layer(model: keras.Model) -> str:
    """Name of the last layer with a 4-D (frames folded into batch) output.

    That is the output of the last convolutional stage, right before global
    average pooling, in the TSN / TSM / SELFY ResNets.

    Raises:
        ValueError: if the model has no such layer.
    """
    for layer in reversed(model.layers):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and shape[1] is not None and shape[1] > 1:
            return layer.name
    raise ValueError(
        f"Model {model.name!r} has no layer with a 4-D output "
        "[batch * num_frames, height, width, channels] to compute Grad-CAM on. "
        "Pass `layer_name`."
    )


def grad_cam(
    model: keras.Model,
    frames: np.ndarray,
    class_index: int | None = None,
    layer_name: str | None = None,
) -> GradCAMResult:
    """Grad-CAM maps of each frame of a clip for one class.

    Args:
        model: a functional video classifier taking `[batch, num_frames,
            height, width, 3]` frames (0..255) and returning logits.
        frames: `[num_frames, height, width, 3]` clip at the model's input
            size.
        class_index: class to explain; None for the predicted class.
        layer_name: feature layer; None for `find_gradcam_layer(model)`.

    Returns:
        A `GradCAMResult`.

    Raises:
        ValueError: for a class index outside the model's classes, frames
            that are not 4-D, or a layer without 4-D output.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(
            "`frames` must be [num_frames, height, width, 3]. "
            f"Received: shape={frames.shape}."
        )
    layer_name = layer_name or find_gradcam_layer(model)
    layer = model.get_layer(layer_name)
    if len(layer.output.shape) != 4:
        raise ValueError(
            f"Grad-CAM needs a layer with a 4-D output. Received: layer_name={layer_name!r} "
            f"with output shape {tuple(layer.output.shape)}."
        )
    probe = keras.Model(model.input, [layer.output, model.outputs[0]])
    inputs = tf.convert_to_tensor(frames[None].astype(np.float32))
    with tf.GradientTape() as tape:
        features, logits = probe(inputs, training=False)
        num_classes = int(logits.shape[-1])
        if class_index is None:
            class_index = int(tf.argmax(logits[0]))
        if not 0 <= int(class_index) < num_classes:
            raise ValueError(
                f"`class_index` must be in [0, {num_classes}). Received: class_index={class_index}."
            )
        score = logits[0, int(class_index)]
    gradients = tape.gradient(score, features)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))
    maps = tf.image.resize(maps[..., None], frames.shape[1:3], method="bilinear")[..., 0]
    maps = maps.numpy()
    peak = maps.max()
    if peak > 0:
        maps = maps / peak
    return GradCAMResult(
        maps=maps.astype(np.float32),
        class_index=int(class_index),
        probabilities=tf.nn.softmax(logits[0]).numpy(),
        layer_name=layer_name,
    )
