"""Batch norms folded into the convolutions before them, for fast inference.

This module rewrites a model (which convolution feeds which batch norm, the
clone, the `FoldedBatchNorm` place-holders); the folding maths, shared with
the layers that fold their own batch norms at run time, is
`selfy_tf.layers._batch_norm_folding`. TensorFlow's CPU graph
optimiser fuses convolution + bias + ReLU (+ residual add) into one oneDNN
call, but leaves the batch norm unfused under bfloat16 and the residual add
unfused behind a batch norm in float32; folding ahead of time removes both
(figures: benchmarks/README.md, "Model inference").
"""

from __future__ import annotations

from typing import Any, Iterator

import keras

from selfy_tf.layers._batch_norm_folding import fold_into_conv
from selfy_tf.models.folded_batch_norm import FoldedBatchNorm

__all__ = ["fold_batch_norms"]


def _history_sources(node_config: Any) -> Iterator[str]:
    """Names of the layers whose outputs a serialized node consumes."""
    if isinstance(node_config, dict):
        if node_config.get("class_name") == "__keras_tensor__":
            yield node_config["config"]["keras_history"][0]
            return
        for value in node_config.values():
            yield from _history_sources(value)
    elif isinstance(node_config, (list, tuple)):
        for value in node_config:
            yield from _history_sources(value)


def _foldable_pairs(model: keras.Model, config: dict) -> dict[str, str]:
    """`{convolution name: batch norm name}` for every Conv2D feeding only a batch norm."""
    layers = config["layers"]
    consumers: dict[str, int] = {}
    sources: dict[str, list[str]] = {}
    calls: dict[str, int] = {}
    for layer in layers:
        calls[layer["name"]] = len(layer["inbound_nodes"])
        sources[layer["name"]] = list(_history_sources(layer["inbound_nodes"]))
        for name in sources[layer["name"]]:
            consumers[name] = consumers.get(name, 0) + 1
    for name in _history_sources(config["output_layers"]):
        consumers[name] = consumers.get(name, 0) + 1
    by_name = {layer.name: layer for layer in model.layers}
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or calls.get(layer.name) != 1:
            continue
        if len(sources.get(layer.name, ())) != 1 or layer.axis not in (-1, len(layer.input.shape) - 1):
            continue
        conv = by_name.get(sources[layer.name][0])
        if (
            isinstance(conv, keras.layers.Conv2D)
            and conv.data_format == "channels_last"
            and calls[conv.name] == 1
            and consumers[conv.name] == 1
        ):
            pairs[conv.name] = layer.name
    return pairs


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """An inference-only copy of `model` with its batch norms folded into the convolutions.

    Every `Conv2D` whose output goes only to a batch norm gets that batch
    norm's moving-statistics transform in its kernel and a bias; the batch
    norm becomes a `FoldedBatchNorm` pass-through of the same name. Other
    layers (the SELFY block, which folds its own batch norms at inference,
    the classifier, ...) are copied with their weights. The copy keeps the
    dtype policy of every layer, saves as `.keras` and exports like the
    original; its logits equal the original's at inference up to float
    rounding. It cannot be trained (`FoldedBatchNorm` refuses
    `training=True`).

    Args:
        model: a functional Keras model, e.g. from `create_model` or a
            loaded `.keras` checkpoint.

    Returns:
        A new functional model sharing no variables with `model`.

    Raises:
        ValueError: if `model` is not a functional model.

    Example:

    >>> model = keras.models.load_model("runs/ssv1_selfy_r50/checkpoints/best.keras")
    >>> fast = fold_batch_norms(model)
    >>> logits = fast.predict(clips)
    """
    config = model.get_config() if isinstance(model, keras.Model) else None
    layers = (config or {}).get("layers") or [{}]
    if "inbound_nodes" not in layers[0] or "output_layers" not in config:
        raise ValueError(
            "`fold_batch_norms` needs a functional Keras model (e.g. from `create_model` "
            f"or `keras.models.load_model`). Received: {type(model).__name__}."
        )
    pairs = _foldable_pairs(model, config)
    folded_norms = set(pairs.values())

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in folded_norms:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy.name)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone_layer)
    # clone_model keeps the layer order (input layers may be renamed).
    for layer, cloned in zip(model.layers, copy.layers):
        if layer.name in pairs:
            cloned.set_weights(fold_into_conv(layer, model.get_layer(pairs[layer.name])))
        elif layer.name not in folded_norms:
            cloned.set_weights(layer.get_weights())
    return copy
