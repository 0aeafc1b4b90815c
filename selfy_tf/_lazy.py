"""Lazy package exports: names imported from their module on first use."""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any, Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Returns `(__getattr__, __dir__)` for a package that exports names lazily.

    Args:
        package: the package's name, for error messages.
        exports: exported name -> module that defines it.
        namespace: the package's `globals()`; a loaded name is cached there.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


class _ExportingPackage(types.ModuleType):
    """A package whose exported names win over its submodules of the same name."""

    _exports: Mapping[str, str] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing `package.name` binds the submodule to `package.name`; an
        # eager `from package.name import name` used to rebind the function.
        if isinstance(value, types.ModuleType) and value.__name__ == self._exports.get(name):
            return
        super().__setattr__(name, value)


def keep_exported_names(package: str, exports: Mapping[str, str]) -> None:
    """Keeps `package.name` the exported object when a submodule has the same name.

    For a lazy package exporting `evaluate` from `package.evaluate`: once that
    module is imported (by any import), the import system would make
    `package.evaluate` the module instead of the function.
    """
    module = sys.modules[package]
    module.__class__ = _ExportingPackage
    module._exports = dict(exports)
