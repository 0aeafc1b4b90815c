"""`create_model`: the single entry point of the model zoo."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import keras

from selfy_tf.models._registry import get_pretrained_cfg, model_args, model_entrypoint, split_name
from selfy_tf.models.precision import global_dtype_policy

logger = logging.getLogger(__name__)

_OFFICIAL_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar")
_KERAS_WEIGHTS_SUFFIX = ".weights.h5"


def create_model(
    name: str,
    num_classes: int | None = None,
    num_frames: int | None = None,
    input_size: int | None = None,
    dropout: float | None = None,
    selfy_stage: str | None = None,
    stss_backend: str | None = None,
    width_multiplier: float | None = None,
    selfy_channels: int | Mapping[str, Any] | None = None,
    sync_batchnorm: bool | None = None,
    causal: bool | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    dtype_policy: str | keras.DTypePolicy | None = None,
    **kwargs: Any,
) -> keras.Model:
    """Builds a registered video classifier by name, optionally with weights.

    Arguments left as `None` take the defaults of `name`
    (`selfy_tf.models.model_args(name)`): the family defaults (shown in
    brackets), updated, for a name `arch.tag` from `list_pretrained()` (e.g.
    `"selfy_tsm_r50.sthv1_16f"`), by the architecture fields of that
    pretrained config (num_classes, num_frames, input_size, ...).

    Args:
        name: a name from `list_models()`, e.g. `"selfy_tsm_r50"`, or a
            pretrained config `arch.tag` from `list_pretrained()`.
        num_classes: int [174], number of action classes.
        num_frames: int [8], frames per clip `T`.
        input_size: int [224], frame height and width. SELFY models need a
            multiple of 16 (with `selfy_stage="res3"`) so that the res3 map
            is even.
        dropout: float [0.5], dropout before the classifier.
        selfy_stage: str ["res3"], the stage the SELFY block follows:
            "res2", "res3" or "res4" (SELFY models only).
        stss_backend: str ["matmul"], backend of the STSS op
            (`selfy_tf.ops.STSS_BACKENDS`; SELFY models only).
        width_multiplier: float [1.0], scales every backbone width (rounded
            to a multiple of 8), for small models.
        selfy_channels: SELFY block widths [reference: hidden 128, extraction
            (4, 16, 64, 64), integration (64, 64, 64, 64)]: an int `k` sets
            the hidden width to `k` and scales the others by `k / 128`; a dict
            with any of `hidden_channels`, `extraction_channels`,
            `integration_channels` overrides those widths.
        sync_batchnorm: bool [False], synchronised batch norm across replicas
            in every batch norm of the model, the backbone's and the SELFY
            block's (all are the package's fused-kernel batch norm, whose
            `synchronized=True` path all-reduces the batch moments).
        causal: bool [False], the causal model for streaming
            (`selfy_tf.streaming`): the temporal shift moves channels
            `[0, C/8)` from the previous frame only and the STSS compares
            frame `t` with frames `t - (L-1) ... t`, so no frame's logits
            depend on a later frame (docs/architecture.md). Same weights as
            the offline model: its weights load into the causal one. TSN
            models are causal already and ignore it.
        pretrained: load the weights file of the pretrained config `name`
            (its `weights_file`, a local path) after building. Needs a name
            `arch.tag` whose config has a weights file, and no `weights`.
        weights: optional path to weights loaded after building: an official
            PyTorch checkpoint (`.pth.tar`, strict, see
            `selfy_tf.weights.load_official_checkpoint`) or a `.weights.h5`
            saved by Keras for the same architecture.
        dtype_policy: Keras dtype policy of every layer [the global policy,
            `keras.config.dtype_policy()`], e.g. `"mixed_bfloat16"`: bfloat16
            compute with float32 variables, faster inference on CPUs with
            AVX512-BF16 or AMX (benchmarks/README.md); `"mixed_float16"` on GPUs. The
            logits stay float32. The global policy is left unchanged.
        **kwargs: further family arguments. (Compiling the STSS op with XLA
            is a runtime choice, `selfy_tf.ops.stss_xla`, not an argument.)

    Returns:
        A Keras functional model: input `frames`
        `[batch, num_frames, input_size, input_size, 3]` (RGB, 0..255, float
        or uint8 values), output float32 logits `[batch, num_classes]`.

    Raises:
        ValueError: for an unknown name or tag (the message lists the valid
            tags of the architecture), bad arguments, `pretrained=True`
            without a weights file, or weights that do not fit the model.
        FileNotFoundError: if the weights file does not exist.
    """
    arch, tag = split_name(name)
    if pretrained:
        weights = _pretrained_weights(name, tag, weights)
    builder = model_entrypoint(arch)
    explicit = {
        "num_classes": num_classes,
        "num_frames": num_frames,
        "input_size": input_size,
        "dropout": dropout,
        "selfy_stage": selfy_stage,
        "stss_backend": stss_backend,
        "width_multiplier": width_multiplier,
        "selfy_channels": selfy_channels,
        "sync_batchnorm": sync_batchnorm,
        "causal": causal,
        **kwargs,
    }
    # Unset arguments take the defaults of `name` (family, then tag).
    arguments = model_args(name)
    arguments.update({key: value for key, value in explicit.items() if value is not None})
    with global_dtype_policy(dtype_policy):
        model = builder(**arguments)
    if weights is not None:
        load_weights_file(model, weights)
    return model


def _pretrained_weights(name: str, tag: str | None, weights: str | os.PathLike | None) -> str:
    """The weights file of the pretrained config `name` (for `pretrained=True`)."""
    if weights is not None:
        raise ValueError(
            f"Pass either `pretrained=True` (the weights file of {name!r}'s config) or "
            f"`weights=PATH`, not both. Received: weights={os.fspath(weights)!r}."
        )
    if tag is None:
        raise ValueError(
            f"`pretrained=True` needs a pretrained config `arch.tag`, e.g. "
            f"{name}.<tag> (`selfy_tf.models.list_pretrained('{name}.*')`). "
            f"Received: name={name!r}."
        )
    path = get_pretrained_cfg(name)["weights_file"]
    if not path:
        raise ValueError(
            f"The pretrained config {name!r} has no `weights_file` (the official release "
            "publishes none): convert a checkpoint with `selfy convert-weights` and "
            "pass `weights=PATH`."
        )
    return os.path.expanduser(os.fspath(path))


def load_weights_file(model: keras.Model, path: str | os.PathLike) -> None:
    """Loads an official `.pth.tar` checkpoint or a Keras `.weights.h5` into `model`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: for an unknown file type or weights that do not fit.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`weights` file not found: {path!r}.")
    if path.endswith(_KERAS_WEIGHTS_SUFFIX):
        model.load_weights(path)
        logger.info("Loaded Keras weights from %s into %s.", path, model.name)
    elif path.endswith(_OFFICIAL_SUFFIXES):
        from selfy_tf.weights import load_official_checkpoint

        load_official_checkpoint(model, path, strict=True)
    else:
        raise ValueError(
            f"`weights` must be an official PyTorch checkpoint ({', '.join(_OFFICIAL_SUFFIXES)}) "
            f"or a Keras '{_KERAS_WEIGHTS_SUFFIX}' file. Received: weights={path!r}."
        )
