"""Helpers shared by the benchmark scripts: environment, thread limits and the JSON result line.

Importing this module sets selfy-tf's TensorFlow environment defaults (as the
`selfy` command does), so every benchmark imports it before TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
import time
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


def matmul_gflops(precision: str = "float32", size: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of a `size`² `tf.matmul` in the compute dtype of the Keras policy `precision`.

    The throughput of this machine's matrix products: the roofline that
    benchmarks divide useful work by.
    """
    import keras
    import tensorflow as tf

    dtype = keras.DTypePolicy(precision).compute_dtype
    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    product = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), tf.float32)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def torch_reference_models(names: list[str], num_classes: int, num_frames: int, threads: int,
                           **kwargs: Any) -> dict:
    """The PyTorch references of zoo models `names` (`selfy_tf.weights.torch_reference`).

    The layers of the official release, float32, with `threads` PyTorch
    threads; a SELFY block computes the STSS the official release's
    plain-PyTorch way (`stss_method="all_pairs"`). `kwargs` go to
    `build_reference` (width settings). Needs torch.
    """
    import torch

    from selfy_tf.weights.torch_reference import build_reference

    torch.set_num_threads(threads)
    return {name: build_reference(name, num_classes, num_frames, stss_method="all_pairs", **kwargs)
            for name in names}


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
