"""Helpers shared by the benchmark scripts: thread limits and the JSON result line."""

from __future__ import annotations

import json
from typing import Any, Mapping

from selfy_tf.files import atomic_write_text


def limit_threads(threads: int) -> None:
    """Limits TensorFlow's intra- and inter-op thread pools (before any op runs)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def write_results(results: Mapping[str, Any], results_file: str | None = None) -> None:
    """Prints `results` as one JSON line on stdout and, if asked, writes it atomically."""
    line = json.dumps(results, sort_keys=True)
    print(line, flush=True)
    if results_file:
        atomic_write_text(results_file, line + "\n")
