"""Initialising the backbone from ImageNet ResNet weights."""

from __future__ import annotations

import logging
import os

import keras
import numpy as np

from selfy_tf.weights import _torch
from selfy_tf.weights.mapping import (
    LoadReport,
    assign_state_dict,
    is_backbone_layer,
    is_skipped_key,
    torch_weight_mapping,
)

logger = logging.getLogger(__name__)

_KERAS_WEIGHTS_SUFFIX = ".weights.h5"
# The ImageNet classifier of a torchvision ResNet; the video model has its own.
_TORCHVISION_CLASSIFIER_PREFIX = "fc."


def load_imagenet_resnet(
    model: keras.Model, path: str | os.PathLike, strict: bool = True
) -> LoadReport:
    """Initialises the backbone of a zoo model from ImageNet ResNet weights.

    Accepts a torchvision ResNet state dict (`resnet50-*.pth` layout: keys
    `conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, ..., `fc.*`) or a
    `.weights.h5` saved by Keras for a zoo model of the same depth and width
    (any variant, number of classes or frames). Only backbone convolutions
    and batch norms are loaded: the classifier (`new_fc`, torchvision `fc`)
    and the SELFY block keep their fresh initialisation.

    Args:
        model: a zoo model (`create_model`).
        path: a torchvision `.pth` file or a `.weights.h5` file.
        strict: fail unless every backbone weight of `model` is found with
            a fitting shape and every backbone entry of the file is used.

    Returns:
        A `LoadReport`; what was loaded is also logged.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ImportError: for a `.pth` file when torch is not installed.
        ValueError: with `strict`, naming the keys that do not fit.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ImageNet weights not found: {path!r}.")
    if path.endswith(_KERAS_WEIGHTS_SUFFIX):
        report = _load_backbone_h5(model, path, strict)
    else:
        state_dict = _torch.load_torch_state_dict(path)
        records = torch_weight_mapping(
            model, backbone_prefix="", include_selfy=False, include_classifier=False
        )

        def skip(key: str) -> bool:
            return is_skipped_key(key) or key.startswith(_TORCHVISION_CLASSIFIER_PREFIX)

        report = assign_state_dict(model, state_dict, records, path, strict=strict, skip=skip)
    logger.info(
        "ImageNet init of %s from %s: loaded %d backbone tensors, skipped %d, kept %d "
        "variables fresh (classifier and SELFY block).",
        model.name,
        path,
        len(report.loaded),
        len(report.skipped),
        len(report.fresh),
    )
    return report


def _load_backbone_h5(model: keras.Model, path: str, strict: bool) -> LoadReport:
    import h5py

    report = LoadReport(source=path)
    stored: dict[str, dict[str, np.ndarray]] = {}
    with h5py.File(path, "r") as handle:
        if "layers" not in handle:
            raise ValueError(
                f"{path!r} is not a Keras `.weights.h5` file of a functional model "
                "(no 'layers' group)."
            )
        for group_key, group in handle["layers"].items():
            variables = group.get("vars")
            name = variables.attrs.get("name") if variables is not None else None
            if isinstance(name, bytes):
                name = name.decode()
            if variables is None or not name or not len(variables):
                # Nested layers (the SELFY block) keep their variables deeper.
                report.skipped.append(group_key)
                continue
            arrays = {key: np.asarray(variables[key]) for key in variables}
            if _is_backbone_name(name):
                stored[name] = arrays
            else:
                report.skipped.append(name)
    targets = [layer for layer in model.layers if layer.weights and is_backbone_layer(layer)]
    loads = []
    for layer in targets:
        arrays = stored.pop(layer.name, None)
        if arrays is None:
            report.missing.append(layer.name)
            continue
        expected = [tuple(variable.shape) for variable in layer.trainable_weights + layer.non_trainable_weights]
        received = [tuple(arrays[str(index)].shape) if str(index) in arrays else None for index in range(len(arrays))]
        if expected != received:
            report.mismatched.append((layer.name, tuple(received), tuple(expected)))
            continue
        loads.append((layer, arrays))
    report.unexpected.extend(sorted(stored))
    if strict and not report.ok:
        raise ValueError(
            f"Backbone weights in {path!r} do not fit model `{model.name}` "
            f"(pass strict=False to load what fits):\n{report.problems()}"
        )
    if not report.ok:
        logger.warning("Loading %s into %s non-strictly:\n%s", path, model.name, report.problems())
    loaded_ids = set()
    for layer, arrays in loads:
        layer.load_own_variables(arrays)
        report.loaded.append(layer.name)
        loaded_ids.update(id(variable) for variable in layer.weights)
    report.fresh = [
        variable.path
        for variable in model.weights
        if id(variable) not in loaded_ids and "seed_generator" not in variable.path
    ]
    return report


def _is_backbone_name(name: str) -> bool:
    from selfy_tf.weights.mapping import torch_module_name

    return torch_module_name(name) is not None
