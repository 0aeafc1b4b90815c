"""Helpers shared by the benchmark scripts: environment, thread limits and the JSON result line.

Importing this module sets selfy-tf's TensorFlow environment defaults (as the
`selfy` command does), so every benchmark imports it before TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Mapping

from selfy_tf.files import atomic_write_text
from selfy_tf.runtime import TENSORFLOW_ENVIRONMENT_DEFAULTS, set_tensorflow_environment_defaults

set_tensorflow_environment_defaults()


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def limit_threads(threads: int) -> None:
    """Limits TensorFlow's intra- and inter-op thread pools (before any op runs)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def write_results(results: Mapping[str, Any], results_file: str | None = None) -> None:
    """Prints `results` as one JSON line on stdout and, if asked, writes it atomically.

    `tf_environment` records the TensorFlow environment variables the run had
    (e.g. `TF_CPU_ALLOCATOR_USE_BFC`), as they change the figures.
    """
    environment = {name: os.environ.get(name) for name in TENSORFLOW_ENVIRONMENT_DEFAULTS}
    line = json.dumps({"tf_environment": environment, **results}, sort_keys=True)
    print(line, flush=True)
    if results_file:
        atomic_write_text(results_file, line + "\n")
