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
   `prepare_model_for_fit` builds from tensor specs instead (which also keeps
   `fit` from consuming a pass of the dataset, under every strategy).
2. After each step the logs are reduced with
   `reduce_per_replica(..., "auto")`, which under multi-worker calls
   `strategy.reduce("MEAN", value, axis=0)`; the logged values are scalars,
   so this fails ("Invalid reduction dimension 0 for input with 0
   dimensions"). `_reduce_per_replica` reduces scalars with `axis=None` (the
   mean over replicas, which is what the single-worker path computes with
   `tf.reduce_mean` over the local results) and leaves everything else to
   Keras.

We keep Keras's `fit` (callbacks, progress bars, validation) rather than a
hand-written `strategy.run` loop; fix 2 is applied only when a multi-worker
strategy is used and is idempotent, and `tests/test_trainer_distributed.py`
runs two real workers through both.
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
    "num_workers",
    "patch_keras_for_multi_worker",
    "prepare_model_for_fit",
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


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Workers (hosts) taking part in `strategy`: 1 unless multi-worker."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    return max(1, int(strategy.extended._num_workers))


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


def prepare_model_for_fit(model, strategy: tf.distribute.Strategy, data_batch_spec) -> None:
    """Builds `model`'s metrics, loss and optimizer from specs, and stops `fit` from doing it with data.

    Under a distribution strategy Keras's `fit` builds the model from one
    batch it pulls from the dataset (`_maybe_symbolic_build`), then resets
    the iterator. Besides failing under multi-worker (fix 1 of the module
    docstring), that consumes one pass of the dataset: our training pipeline
    reshuffles and re-draws augmentations on every pass, so `fit` would then
    train on the *second* pass and a mirrored run would see other batches
    than a one-device run or a resumed run. Shapes and dtypes are all the
    build needs, so it is done here from `data_batch_spec` (a structure of
    `tf.TensorSpec`) and `fit`'s data-driven build is replaced by a no-op.
    Call inside `strategy.scope()` after `compile`.
    """
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        patch_keras_for_multi_worker()
    model._symbolic_build(data_batch=data_batch_spec)

    def build_from_spec(self, iterator=None, data_batch=None):
        self._symbolic_build(data_batch=data_batch_spec)

    model._maybe_symbolic_build = types.MethodType(build_from_spec, model)
