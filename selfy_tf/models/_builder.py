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
# The `kind:PATH` prefixes of a weights spec (`load_weights_file`); "pretrained"
# stands alone. The trainer's `model.init` takes the same kinds.
_SPEC_KINDS = ("imagenet", "official", "keras")
_PRETRAINED_SPEC = "pretrained"
# What the log says each kind of weights is.
_KIND_DESCRIPTIONS = {
    "weights": "Keras weights",
    "official": "official checkpoint",
    "imagenet": "ImageNet backbone",
    "keras": "Keras model",
    "pretrained": "pretrained",
}


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
    batch_norm_statistics: str | None = None,
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
        batch_norm_statistics: str ["exact"], who computes training-mode
            batch statistics: "exact" (exact block sums everywhere),
            "tensorflow_backbone" (TensorFlow's fused training kernel in the
            backbone, exact sums in the SELFY block) or "tensorflow" (the
            fused kernel everywhere). The kernel is faster but less precise:
            docs/architecture.md has the measurements behind the default.
            Exact sums are used on JAX and for a synchronised batch norm
            across replicas whatever the choice. Inference is unaffected.
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
        weights: optional weights loaded after building, a spec of
            `load_weights_file`: a path to an official PyTorch checkpoint
            (`.pth.tar`, strict, see `selfy_tf.weights.load_official_checkpoint`)
            or to a `.weights.h5` saved by Keras for the same architecture;
            or `"imagenet:PATH"`, `"official:PATH"`, `"keras:PATH"`,
            `"pretrained"`, as the trainer's `model.init` takes them.
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
        "batch_norm_statistics": batch_norm_statistics,
        "causal": causal,
        **kwargs,
    }
    # Unset arguments take the defaults of `name` (family, then tag).
    arguments = model_args(name)
    arguments.update({key: value for key, value in explicit.items() if value is not None})
    with global_dtype_policy(dtype_policy):
        model = builder(**arguments)
    if weights is not None:
        load_weights_file(model, weights, name=name)
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


def _resolve_weights_spec(spec: str | os.PathLike, name: str | None, argument: str) -> tuple[str, str]:
    """`(kind, path)` of a weights spec; the file is checked to exist before its suffix."""
    text = os.fspath(spec)
    if text == _PRETRAINED_SPEC:
        if name is None or "." not in name or not get_pretrained_cfg(name)["weights_file"]:
            raise ValueError(
                f"`{argument}={_PRETRAINED_SPEC}` needs a model name whose pretrained config has a "
                f"weights file (e.g. selfy_tsm_r18.motion). Received: name={name!r}."
            )
        kind, path = _PRETRAINED_SPEC, os.path.expanduser(os.fspath(get_pretrained_cfg(name)["weights_file"]))
    else:
        prefix, separator, rest = text.partition(":")
        kind, path = (prefix, rest) if separator and prefix in _SPEC_KINDS else ("", text)
    if not os.path.exists(path):
        raise FileNotFoundError(f"`{argument}` file not found: {path!r}.")
    if kind:
        return kind, path
    if path.endswith(_KERAS_WEIGHTS_SUFFIX):
        return "weights", path
    if path.endswith(_OFFICIAL_SUFFIXES):
        return "official", path
    raise ValueError(
        f"`{argument}` must be an official PyTorch checkpoint ({', '.join(_OFFICIAL_SUFFIXES)}) "
        f"or a Keras '{_KERAS_WEIGHTS_SUFFIX}' file, or one of "
        f"{[kind + ':PATH' for kind in _SPEC_KINDS] + [_PRETRAINED_SPEC]}. Received: {argument}={text!r}."
    )


def load_weights_file(
    model: keras.Model, spec: str | os.PathLike, *, name: str | None = None, argument: str = "weights"
) -> list[str]:
    """Loads the weights that `spec` names into `model`.

    The one way weights enter a built model: `create_model(weights=...)`
    and the trainer's `model.init` both come here.

    Args:
        model: a zoo model (`create_model`).
        spec: which weights, and how they are read:
            - a path to an official PyTorch checkpoint (`.pth.tar`, `.pth`,
              `.pt`, `.tar`) or `"official:PATH"`: every weight, strict
              (`selfy_tf.weights.load_official_checkpoint`);
            - a path to a `.weights.h5` saved by Keras for the same
              architecture: every weight, strict;
            - `"imagenet:PATH"`: the backbone from an ImageNet ResNet
              (`selfy_tf.weights.load_imagenet_resnet`);
            - `"keras:PATH"`: a `.keras` model of the same architecture,
              e.g. an earlier run's `best.keras`;
            - `"pretrained"`: the weights file of the pretrained config
              `name`.
            The last two fine-tune: a classifier of another size starts
            afresh (`selfy_tf.weights.copy_matching_weights`).
        name: the model's name as given to `create_model` (needed for
            `"pretrained"`).
        argument: the setting that holds `spec`, named in error messages
            (e.g. `"model.init"`).

    Returns:
        The names of the layers left as initialised (a classifier of another
        size, when fine-tuning); empty otherwise.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown file type, `"pretrained"` without a
            pretrained config, or weights that do not fit.
    """
    from selfy_tf import weights as weights_lib

    kind, path = _resolve_weights_spec(spec, name, argument)
    fresh: list[str] = []
    if kind == "weights":
        model.load_weights(path)
    elif kind == "official":
        weights_lib.load_official_checkpoint(model, path, strict=True)
    elif kind == "imagenet":
        weights_lib.load_imagenet_resnet(model, path)
    else:
        if kind == _PRETRAINED_SPEC:
            source = create_model(name, pretrained=True)
        else:
            source = keras.saving.load_model(path, compile=False)
        fresh = weights_lib.copy_matching_weights(source, model)
        if fresh:
            logger.info(
                "Fine-tuning: %s starts afresh (%d classes here, %d in %s).",
                ", ".join(fresh),
                int(model.output_shape[-1]),
                source.output_shape[-1],
                os.path.basename(path),
            )
    logger.info("Initialised %s from %s %s.", model.name, _KIND_DESCRIPTIONS[kind], path)
    return fresh
