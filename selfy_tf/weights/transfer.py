"""Weights of one Keras model copied into another of the same architecture, for fine-tuning."""

from __future__ import annotations

from typing import Sequence

import keras

__all__ = ["CLASSIFIER_LAYER", "copy_matching_weights"]

# The classifier of every model of the zoo (the official `new_fc`).
CLASSIFIER_LAYER = "new_fc"


def copy_matching_weights(
    source: keras.Model, target: keras.Model, replaceable: Sequence[str] = (CLASSIFIER_LAYER,)
) -> list[str]:
    """Copies the weights of each layer of `source` into the same-named layer of `target`.

    The layers named in `replaceable` may differ in shape (a classifier for
    another class count): those keep `target`'s initialisation. Every other
    layer must match, so that weights never land in another architecture.

    Returns:
        The names of the layers left as initialised.

    Raises:
        ValueError: a layer of `target` is missing in `source` or has weights
            of other shapes (naming the layer and both shapes).

    Example:

    >>> pretrained = create_model("selfy_tsm_r18.motion", pretrained=True)
    >>> model = create_model("selfy_tsm_r18.motion", num_classes=5)
    >>> copy_matching_weights(pretrained, model)
    ['new_fc']
    """
    source_layers = {layer.name: layer for layer in source.layers}
    kept = []
    for layer in target.layers:
        values = layer.get_weights()
        if not values:
            continue
        if layer.name not in source_layers:
            raise ValueError(
                f"Layer `{layer.name}` of {target.name} has no counterpart in {source.name}: "
                "the two models have different architectures."
            )
        source_values = source_layers[layer.name].get_weights()
        source_shapes = [value.shape for value in source_values]
        target_shapes = [value.shape for value in values]
        if source_shapes != target_shapes:
            if layer.name in replaceable:
                kept.append(layer.name)
                continue
            raise ValueError(
                f"Layer `{layer.name}` has weights of shapes {target_shapes} in {target.name} "
                f"but {source_shapes} in {source.name}: the two models have different architectures."
            )
        layer.set_weights(source_values)
    return kept
