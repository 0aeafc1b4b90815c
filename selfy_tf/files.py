"""Atomic file writes: a reader sees the old file or the finished new one.

Every writer of the package (checkpoints, weights, TFRecord shards and their
manifests, exported configs, TFLite models, plots, reports) goes through
`atomic_path`: it writes under a temporary name beside the destination (same
file system, so the final `os.replace` is atomic) and renames it onto the
destination only when writing succeeded. A crash or an error leaves the old
file untouched and no temporary behind.

    with atomic_path("run/checkpoints/last.keras", suffix=".keras") as temporary:
        model.save(temporary)

    atomic_write_json("run/eval.json", {"top1": 0.51})
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "temporary_pattern",
]

_counter = itertools.count()


def _temporary_name(path: str, suffix: str) -> str:
    directory, name = os.path.split(path)
    unique = f"{os.getpid()}-{threading.get_ident()}-{next(_counter)}"
    return os.path.join(directory, f".{name}.tmp-{unique}{suffix}")


def temporary_pattern(path_pattern: str) -> str:
    """A `glob` pattern of the temporaries `atomic_path` makes for `path_pattern`.

    A process killed while writing (`kill -9`) leaves its temporary behind;
    a resuming job can remove them with `glob.glob(temporary_pattern(...))`.
    """
    directory, name = os.path.split(path_pattern)
    return os.path.join(directory, f".{name}.tmp-*")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary file name to write; renames it onto `path` on success.

    Args:
        path: the destination. Its directory is created if missing.
        suffix: ending of the temporary name, for writers that choose the
            format from the extension (`".keras"`, `".weights.h5"`, `".mp4"`).

    Yields:
        A fresh name beside `path` (a hidden file in the same directory).
        When the block ends without an exception it replaces `path`; when it
        raises, the temporary file is removed and `path` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = _temporary_name(path, suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Writes `data` to `path` atomically, flushed to disk; returns the path."""
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    return os.fspath(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Writes `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int = 2) -> str:
    """Writes `payload` as indented JSON (and a final newline) atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=indent) + "\n")
