"""Shared by tests that start several JAX processes compiling the same programs."""

from __future__ import annotations

import os


def compilation_cache(directory: str | os.PathLike) -> dict[str, str]:
    """Environment variables that make a JAX process keep every program it
    compiles in `directory` and load the ones already there (JAX's
    persistent compilation cache; a later process skips the compilation)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(directory), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
