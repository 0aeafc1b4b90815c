"""Registry of model builders and their pretrained-config tables.

A family module registers one builder per variant with `@register_model` and
one table of pretrained configs (`arch.tag` keys) with
`register_pretrained_cfgs`; `create_model` (in `_builder.py`) looks names up
here. A builder is registered with its family's argument defaults, the one
copy of them: `model_args("arch.tag")` is those defaults updated by the
architecture fields of the tag's pretrained config (the config's keys that
are builder arguments).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

_model_entrypoints: dict[str, Callable[..., Any]] = {}
_model_to_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict[str, Any]] = {}
_model_defaults: dict[str, dict[str, Any]] = {}


def register_model(
    function: Callable[..., Any], defaults: dict[str, Any] | None = None
) -> Callable[..., Any]:
    """Registers a model builder under its function name.

    Args:
        function: a builder `fn(**kwargs) -> keras.Model`; its `__name__` is
            the model name.
        defaults: the builder's arguments and their default values (the
            family's table, shared by its builders; `None` values mean "the
            builder decides", e.g. the reference SELFY widths).

    Returns:
        `function`, unchanged, so this works as a decorator.

    Raises:
        ValueError: if a builder with that name is already registered.
    """
    name = function.__name__
    if name in _model_entrypoints:
        raise ValueError(
            f"Model `{name}` is already registered (by "
            f"{_model_to_module[name]}). Registered names must be unique; "
            "pick another function name."
        )
    _model_entrypoints[name] = function
    _model_to_module[name] = function.__module__
    _model_defaults[name] = dict(defaults or {})
    return function


def register_pretrained_cfgs(cfgs: dict[str, dict[str, Any]]) -> None:
    """Registers pretrained configs keyed `arch.tag` (e.g. `selfy_tsm_r50.sthv1_8f`).

    Raises:
        ValueError: if a key is already registered or its `arch` is unknown.
    """
    for key, cfg in cfgs.items():
        arch = key.split(".", 1)[0]
        if key in _pretrained_cfgs:
            raise ValueError(f"Pretrained config `{key}` is already registered.")
        if arch not in _model_entrypoints:
            raise ValueError(
                f"Pretrained config `{key}` names an unregistered model `{arch}`. "
                "Register the builder before its configs."
            )
        _pretrained_cfgs[key] = dict(cfg)


def list_models(pattern: str | None = None) -> list[str]:
    """Returns the sorted names of registered models.

    Args:
        pattern: optional shell-style wildcard, e.g. `"selfy_*"`.
    """
    names = sorted(_model_entrypoints)
    if pattern:
        names = [name for name in names if fnmatch.fnmatch(name, pattern)]
    return names


def list_pretrained(pattern: str | None = None) -> list[str]:
    """Returns the sorted `arch.tag` keys of registered pretrained configs."""
    keys = sorted(_pretrained_cfgs)
    if pattern:
        keys = [key for key in keys if fnmatch.fnmatch(key, pattern)]
    return keys


def split_name(name: str) -> tuple[str, str | None]:
    """Splits `arch.tag` into `(arch, tag)`; `(arch, None)` without a tag.

    Raises:
        ValueError: for an unknown architecture or tag; the message lists the
            valid names or the valid tags of that architecture.
    """
    arch, dot, tag = name.partition(".")
    model_entrypoint(arch)
    if not dot:
        return arch, None
    if name not in _pretrained_cfgs:
        tags = [key.split(".", 1)[1] for key in list_pretrained(f"{arch}.*")]
        raise ValueError(
            f"Unknown tag `{tag}` of model `{arch}` (in {name!r}). Valid tags of "
            f"`{arch}`: {', '.join(tags) or 'none (use the bare name)'}."
        )
    return arch, tag


def get_pretrained_cfg(key: str) -> dict[str, Any]:
    """Returns a copy of the pretrained config `arch.tag`.

    Raises:
        ValueError: for an unknown architecture or tag (see `split_name`).
    """
    _, tag = split_name(key)
    if tag is None:
        raise ValueError(
            f"A pretrained config is named `arch.tag`; {key!r} has no tag. Valid "
            f"keys of `{key}`: {', '.join(list_pretrained(f'{key}.*')) or 'none'}."
        )
    return dict(_pretrained_cfgs[key])


def model_args(name: str) -> dict[str, Any]:
    """The builder arguments that `name` (`arch` or `arch.tag`) stands for.

    The family defaults of `arch`, updated by the set (non-None) architecture
    fields of the tag's pretrained config, e.g. `num_frames=16` for
    `selfy_tsm_r50.sthv1_16f`.

    Raises:
        ValueError: for an unknown architecture or tag (see `split_name`).
    """
    arch, tag = split_name(name)
    arguments = dict(_model_defaults[arch])
    if tag is not None:
        cfg = _pretrained_cfgs[name]
        arguments.update(
            {key: cfg[key] for key in arguments if cfg.get(key) is not None}
        )
    return arguments


def is_model(name: str) -> bool:
    """Whether `name` is a registered model."""
    return name in _model_entrypoints


def model_entrypoint(name: str) -> Callable[..., Any]:
    """Returns the builder registered as `name`.

    Raises:
        ValueError: for an unknown name, saying how to list valid ones.
    """
    if name not in _model_entrypoints:
        raise ValueError(
            f"Unknown model `name`: {name!r}. Call "
            "`selfy_tf.models.list_models()` for the valid names: "
            f"{', '.join(list_models())}."
        )
    return _model_entrypoints[name]
