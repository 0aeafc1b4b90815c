"""Registry of model builders and their pretrained-config tables.

A family module registers one builder per variant with `@register_model` and
one table of pretrained configs (`arch.tag` keys) with
`register_pretrained_cfgs`; `create_model` (in `_builder.py`) looks names up
here.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

_model_entrypoints: dict[str, Callable[..., Any]] = {}
_model_to_module: dict[str, str] = {}
_pretrained_cfgs: dict[str, dict[str, Any]] = {}


def register_model(function: Callable[..., Any]) -> Callable[..., Any]:
    """Registers a model builder under its function name.

    Args:
        function: a builder `fn(**kwargs) -> keras.Model`; its `__name__` is
            the model name.

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


def get_pretrained_cfg(key: str) -> dict[str, Any]:
    """Returns a copy of the pretrained config `arch.tag`.

    Raises:
        ValueError: for an unknown key.
    """
    if key not in _pretrained_cfgs:
        raise ValueError(
            f"Unknown pretrained config `{key}`. Valid keys: "
            f"{', '.join(list_pretrained())}."
        )
    return dict(_pretrained_cfgs[key])


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
