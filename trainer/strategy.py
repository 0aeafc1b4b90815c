"""Distribution strategy selection, and the fix that lets `model.fit` run multi-worker.

`make_strategy("auto")` gives `MirroredStrategy` when more than one GPU (or
logical CPU device) is visible and the default strategy otherwise;
`"multi_worker"` builds `MultiWorkerMirroredStrategy` from `TF_CONFIG`.

Why a patch for multi-worker (tensorflow/tensorflow#72388): Keras 3.15's
TensorFlow trainer breaks under `MultiWorkerMirroredStrategy` in two places,
both in `keras/src/backend/tensorflow/trainer.py`:

1. `fit` first "symbolically builds" the model from one batch. It gets that
   batch with `strategy.reduce("MEAN", batch, axis=None)`, which under
   multi-worker goes through the collective all-reduce and fails on the
   per-replica input ("Attempt to convert a value (PerReplica...) with an
   unsupported type"). Only shapes and dtypes matter there, so
   `_local_symbolic_build` takes this worker's first replica's batch instead.
2. After each step the logs are reduced with
   `reduce_per_replica(..., "auto")`, which under multi-worker calls
   `strategy.reduce("MEAN", value, axis=0)`; the logged values are scalars,
   so this fails ("Invalid reduction dimension 0 for input with 0
   dimensions"). `_reduce_per_replica` reduces scalars with `axis=None` (the
   mean over replicas, which is what the single-worker path computes with
   `tf.reduce_mean` over the local results) and leaves everything else to
   Keras.

We keep Keras's `fit` (callbacks, progress bars, validation) rather than a
hand-written `strategy.run` loop; the two fixes are applied only when a
multi-worker strategy is used, are idempotent, and `tests/test_trainer_distributed.py`
runs two real workers through them.
"""

from __future__ import annotations

import json
import logging
import os
import types

import tensorflow as tf

logger = logging.getLogger(__name__)

__all__ = [
    "is_chief",
    "make_strategy",
    "patch_keras_for_multi_worker",
    "prepare_model_for_multi_worker",
    "worker_index",
]

_PATCHED = False


def _visible_device_count() -> tuple[str, int]:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return "GPU", len(gpus)
    tpus = tf.config.list_logical_devices("TPU")
    if tpus:
        return "TPU", len(tpus)
    return "CPU", len(tf.config.list_logical_devices("CPU"))


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Creates the strategy named by `runtime.strategy`.

    Call it before anything else touches TensorFlow when `name` is
    `"multi_worker"` (the collective runtime must be set up first).

    Args:
        name: "auto" (mirrored when several devices are visible, else the
            default strategy), "none", "mirrored" or "multi_worker"
            (`MultiWorkerMirroredStrategy` configured by `TF_CONFIG`).

    Raises:
        ValueError: unknown name, or "multi_worker" without a valid `TF_CONFIG`.
    """
    if name == "multi_worker":
        raw = os.environ.get("TF_CONFIG")
        if not raw:
            raise ValueError(
                "`--strategy multi_worker` needs the TF_CONFIG environment variable, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}.'
            )
        try:
            json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON ({error}). Received: {raw!r}.") from None
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        patch_keras_for_multi_worker()
        logger.info(
            "Strategy: MultiWorkerMirroredStrategy, %d replicas in sync (worker %d).",
            strategy.num_replicas_in_sync,
            worker_index(strategy),
        )
        return strategy
    if name not in ("auto", "none", "mirrored"):
        raise ValueError(
            f"`runtime.strategy` must be 'auto', 'none', 'mirrored' or 'multi_worker'. Received: {name!r}."
        )
    kind, count = _visible_device_count()
    if name == "mirrored" or (name == "auto" and count > 1):
        devices = [device.name for device in tf.config.list_logical_devices(kind)]
        strategy = tf.distribute.MirroredStrategy(devices)
        logger.info("Strategy: MirroredStrategy over %d %s devices.", len(devices), kind)
        return strategy
    logger.info("Strategy: one device (%s).", kind)
    return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._num_workers > 1
    )


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's task index (0 unless multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0
    return int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, TensorBoard and CSV.

    That is the `chief` task if the cluster has one, else worker 0.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type = resolver.task_type
    if task_type in (None, "chief"):
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and "chief" not in cluster and int(resolver.task_id or 0) == 0


def _reduce_per_replica(original):
    def reduce_per_replica(values, strategy, reduction):
        from keras.src.backend.tensorflow import trainer as keras_tf_trainer

        if reduction in ("auto", "mean") and keras_tf_trainer._collective_all_reduce_multi_worker(strategy):

            def reduce(value):
                rank = value.shape.rank if hasattr(value, "shape") else None
                return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._selfy_original = original
    return reduce_per_replica


def patch_keras_for_multi_worker() -> None:
    """Applies fix 2 of the module docstring (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    keras_tf_trainer.reduce_per_replica = _reduce_per_replica(keras_tf_trainer.reduce_per_replica)
    _PATCHED = True


def _local_symbolic_build(self, iterator=None, data_batch=None):
    # Fix 1 of the module docstring: build from this worker's first replica's
    # batch; shapes and dtypes are all the symbolic build needs.
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, distributed_iterator in iterator:
            batch = next(distributed_iterator)
            data_batch = tf.nest.map_structure(
                lambda value: self.distribute_strategy.experimental_local_results(value)[0]
                if isinstance(value, tf.distribute.DistributedValues)
                else value,
                batch,
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def prepare_model_for_multi_worker(model, strategy: tf.distribute.Strategy) -> None:
    """Applies fix 1 of the module docstring to `model` (only under multi-worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    patch_keras_for_multi_worker()
    model._maybe_symbolic_build = types.MethodType(_local_symbolic_build, model)
