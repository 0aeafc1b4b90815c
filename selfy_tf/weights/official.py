"""Loading checkpoints of the official PyTorch SELFY / TSM release."""

from __future__ import annotations

import logging
import os

import keras

from selfy_tf.weights import _torch
from selfy_tf.weights.mapping import (
    CLASSIFIER_LAYER,
    OFFICIAL_BACKBONE_PREFIX,
    OFFICIAL_CLASSIFIER_PREFIX,
    LoadReport,
    assign_state_dict,
    is_skipped_key,
    torch_weight_mapping,
)

logger = logging.getLogger(__name__)

# With dropout 0 the official TSN wrapper keeps the classifier inside the
# backbone as `fc1` instead of `new_fc`.
_ALTERNATIVE_CLASSIFIER_PREFIX = f"{OFFICIAL_BACKBONE_PREFIX}fc1."


def normalize_official_keys(state_dict: dict) -> dict:
    """Brings official key variants to the `module.base_model.` / `module.new_fc.` layout.

    Handles checkpoints saved without `nn.DataParallel` (no `module.` prefix)
    and models trained with dropout 0, whose classifier is
    `module.base_model.fc1`.
    """
    if state_dict and not any(key.startswith("module.") for key in state_dict):
        state_dict = {f"module.{key}": value for key, value in state_dict.items()}
    if not any(key.startswith(OFFICIAL_CLASSIFIER_PREFIX) for key in state_dict):
        state_dict = {
            (
                OFFICIAL_CLASSIFIER_PREFIX + key[len(_ALTERNATIVE_CLASSIFIER_PREFIX):]
                if key.startswith(_ALTERNATIVE_CLASSIFIER_PREFIX)
                else key
            ): value
            for key, value in state_dict.items()
        }
    return state_dict


def load_official_state_dict(
    model: keras.Model,
    state_dict: dict,
    source: str = "<state dict>",
    strict: bool = True,
    load_classifier: bool = True,
) -> LoadReport:
    """Loads an official-layout state dict (numpy arrays) into a zoo model.

    See `load_official_checkpoint`; this variant takes the arrays directly.
    """
    state_dict = normalize_official_keys(dict(state_dict))
    records = torch_weight_mapping(model, include_classifier=load_classifier)

    def skip(key: str) -> bool:
        if is_skipped_key(key):
            return True
        return not load_classifier and key.startswith(OFFICIAL_CLASSIFIER_PREFIX)

    report = assign_state_dict(model, state_dict, records, source, strict=strict, skip=skip)
    logger.info(
        "Loaded %d tensors from %s into %s (skipped on purpose: %d%s).",
        len(report.loaded),
        source,
        model.name,
        len(report.skipped),
        "" if load_classifier else f"; classifier `{CLASSIFIER_LAYER}` kept fresh",
    )
    return report


def load_official_checkpoint(
    model: keras.Model,
    path: str | os.PathLike,
    strict: bool = True,
    load_classifier: bool = True,
) -> LoadReport:
    """Loads a checkpoint of the official PyTorch SELFY / TSM code into `model`.

    The checkpoint is a `.pth.tar` dict with a `state_dict` whose keys are
    `module.base_model.*` (backbone and SELFY block) and `module.new_fc.*`
    (classifier, a kernel-1 Conv1d). It is read with
    `torch.load(path, map_location="cpu", weights_only=True)` and every tensor
    is converted to the Keras layout (see `selfy_tf.weights.mapping`). All
    tensors must be consumed except BatchNorm `num_batches_tracked`.

    Args:
        model: a zoo model of the same architecture (`create_model`).
        path: the checkpoint file.
        strict: fail, naming every missing, unexpected and shape-mismatched
            key, unless everything fits; with `strict=False` such keys are
            logged and the rest is loaded.
        load_classifier: set False to keep a fresh classifier (fine-tuning
            to another number of classes); the classifier keys are then
            skipped on purpose.

    Returns:
        A `LoadReport` listing what was loaded and skipped.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ImportError: if torch is not installed (`pip install -e ".[torch]"`).
        ValueError: with `strict`, if the checkpoint does not fit `model`.
    """
    path = os.fspath(path)
    state_dict = _torch.load_torch_state_dict(path)
    return load_official_state_dict(
        model, state_dict, source=path, strict=strict, load_classifier=load_classifier
    )
