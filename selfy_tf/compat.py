"""Compatibility with the files and flags of earlier selfy-tf versions.

Every shim that keeps an older `.keras` file, `config.yaml` or command line
working lives here, so that they can be dropped together: they are removed in
the next minor version after 0.1.0 (`REMOVED_IN`).

- `stss_jit` in the config of `SELFYBlock` and `STSSTransformation` (older
  `.keras` files) is ignored: XLA for the STSS op is the runtime switch
  `selfy_tf.ops.stss_xla` (`drop_layer_stss_jit`).
- `model.stss_jit` in an older `config.yaml` is read as `runtime.stss_xla`
  (`move_model_stss_jit`).
- `selfy export --resize-short N` is the earlier name of `--scale-size N`; it
  still works and prints a deprecation notice (`deprecated_alias`).
- `tfrecords.eval_view` and `tfrecords.sampling` moved below the apps, to
  `selfy_tf.eval_view` and `selfy_tf.sampling` (docs/architecture.md); the
  old import paths still work and warn (`alias_moved_module`).
- The presets moved from `trainer.configs` to `trainer.presets`:
  `trainer.configs.get_preset` (and `list_presets`, `register_preset`,
  `SSV1_NO_FLIP_CLASSES`) still work and warn (`moved_attribute`).

Nothing here imports TensorFlow or Keras.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Any

# The version that removes everything in this module.
REMOVED_IN = "0.2.0"

# Earlier import paths of modules that moved: old name -> new name.
MOVED_MODULES = {
    "tfrecords.eval_view": "selfy_tf.eval_view",
    "tfrecords.sampling": "selfy_tf.sampling",
}

# Names that moved to another module: old module -> (new module, names).
MOVED_ATTRIBUTES = {
    "trainer.configs": (
        "trainer.presets",
        ("SSV1_NO_FLIP_CLASSES", "get_preset", "list_presets", "register_preset"),
    ),
}


def drop_layer_stss_jit(kwargs: dict[str, Any]) -> None:
    """Removes `stss_jit`, saved by earlier versions, from a SELFY layer's `kwargs`.

    Args:
        kwargs: the `**kwargs` of the layer's constructor, changed in place.
    """
    kwargs.pop("stss_jit", None)


def move_model_stss_jit(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with `model.stss_jit` of earlier versions moved to `runtime.stss_xla`.

    An explicit `runtime.stss_xla` wins over the moved value.

    Args:
        values: a nested config dict, e.g. a loaded `config.yaml`; not changed.

    Returns:
        `values` itself when it holds no `model.stss_jit`, else a changed copy.
    """
    model = values.get("model")
    if not isinstance(model, dict) or "stss_jit" not in model:
        return values
    values = dict(values)
    model = dict(model)
    runtime = dict(values.get("runtime") or {})
    runtime.setdefault("stss_xla", model.pop("stss_jit"))
    values["model"], values["runtime"] = model, runtime
    return values


def deprecated_alias(replacement: str) -> type[argparse.Action]:
    """An argparse action for an earlier name of the flag `replacement`.

    It stores the value as `replacement` does and prints a one-line notice
    on stderr naming `replacement`. Give it the same `dest` and `type`.

    Args:
        replacement: the flag to use instead, e.g. `"--scale-size"`.

    Returns:
        The action class, for `add_argument(..., action=...)`.
    """

    class DeprecatedAlias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(
                f"{parser.prog}: warning: {option_string} is deprecated and will be removed "
                f"in {REMOVED_IN}; use {replacement}.",
                file=sys.stderr,
            )
            setattr(namespace, self.dest, values)

    return DeprecatedAlias


def alias_moved_module(old_name: str) -> None:
    """Makes the module `old_name` (in `MOVED_MODULES`) the module it moved to.

    Called by the stub left at the old path: the import then returns the new
    module itself (so its classes are the same objects), with a
    `DeprecationWarning` naming the new path.

    Args:
        old_name: the stub's `__name__`, e.g. `"tfrecords.eval_view"`.
    """
    new_name = MOVED_MODULES[old_name]
    warnings.warn(
        f"`{old_name}` moved to `{new_name}`; the old import path is removed in {REMOVED_IN}.",
        DeprecationWarning,
        stacklevel=3,
    )
    sys.modules[old_name] = importlib.import_module(new_name)


def moved_attribute(module_name: str, name: str) -> Any:
    """`name` of `module_name` as it is now, for the module's `__getattr__`.

    Args:
        module_name: the module asked, e.g. `"trainer.configs"`.
        name: the attribute asked.

    Returns:
        The attribute from the module it moved to (`MOVED_ATTRIBUTES`), with
        a `DeprecationWarning` naming that module.

    Raises:
        AttributeError: `name` did not move from `module_name`.
    """
    new_module, names = MOVED_ATTRIBUTES.get(module_name, ("", ()))
    if name not in names:
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    warnings.warn(
        f"`{module_name}.{name}` moved to `{new_module}.{name}`; the old name is removed in {REMOVED_IN}.",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(new_module), name)


__all__ = [
    "MOVED_ATTRIBUTES",
    "MOVED_MODULES",
    "REMOVED_IN",
    "alias_moved_module",
    "deprecated_alias",
    "drop_layer_stss_jit",
    "move_model_stss_jit",
    "moved_attribute",
]
