"""Where `train` runs: one small interface over `tf.distribute` and `keras.distribution`.

The trainer needs the same few things from every backend: how many replicas
share a step, which worker owns the run directory, a scope to build the model
in, and a model whose metric and optimizer
variables are built from shapes (not from a batch pulled out of the data, see
`trainer.strategy.prepare_model_for_fit`).

- TensorFlow (`TensorFlowReplicas`): a `tf.distribute.Strategy` chosen by
  `runtime.strategy` (`trainer.strategy.make_strategy`): one device,
  `MirroredStrategy` or `MultiWorkerMirroredStrategy`.
- JAX (`KerasReplicas`): `keras.distribution.DataParallel` over all local
  devices when there is more than one (the equivalent of `MirroredStrategy`),
  else plain single-device training. Multi-host JAX is not supported;
  `--strategy multi_worker` is the TensorFlow route.

TensorFlow is imported only by `TensorFlowReplicas`.
"""

from __future__ import annotations

import contextlib
import logging

import keras

logger = logging.getLogger(__name__)

__all__ = ["KerasReplicas", "TensorFlowReplicas", "make_replicas"]


class TensorFlowReplicas:
    """A `tf.distribute.Strategy` seen through the trainer's interface."""

    def __init__(self, strategy):
        from trainer import strategy as strategy_lib

        self.strategy = strategy
        self.num_replicas = int(strategy.num_replicas_in_sync)
        # `distribute_datasets_from_function` runs one input pipeline per worker.
        self.num_input_pipelines = strategy_lib.num_workers(strategy)
        self.chief = strategy_lib.is_chief(strategy)
        self.worker = strategy_lib.worker_index(strategy)

    def run_scope(self):
        """Around the whole run (build, restore and every `fit`): nothing to enter."""
        return contextlib.nullcontext()

    def build_scope(self):
        """Around model, optimizer and metric creation: the strategy's scope."""
        return self.strategy.scope()

    def prepare_model_for_fit(self, model: keras.Model, frames_shape: tuple, num_classes: int) -> None:
        import tensorflow as tf

        from trainer import strategy as strategy_lib

        batch_spec = (
            tf.TensorSpec((None, *frames_shape), tf.uint8),
            tf.TensorSpec((None, num_classes), tf.float32),
        )
        strategy_lib.prepare_model_for_fit(model, self.strategy, batch_spec)


class KerasReplicas:
    """Single-host training under a non-TensorFlow backend, optionally `DataParallel`.

    Args:
        distribution: a `keras.distribution.Distribution` (DataParallel), or
            None for one device.
    """

    def __init__(self, distribution=None):
        self.distribution = distribution
        self.num_replicas = len(distribution.device_mesh.devices.reshape(-1)) if distribution is not None else 1
        # One pipeline of global batches, split over the devices by Keras.
        self.num_input_pipelines = 1
        self.chief = True
        self.worker = 0

    def run_scope(self):
        # Keras's JAX trainer shards each batch by the distribution in effect
        # when `fit` runs, so every `fit` (not only the build) is inside it.
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()

    def build_scope(self):
        return contextlib.nullcontext()

    def prepare_model_for_fit(self, model: keras.Model, frames_shape: tuple, num_classes: int) -> None:
        # Builds metrics, loss and optimizer from shapes; `fit` then finds
        # everything built and pulls no batch to build from.
        batch = (
            keras.KerasTensor((None, *frames_shape), "uint8"),
            keras.KerasTensor((None, num_classes), "float32"),
        )
        model._symbolic_build(data_batch=batch)


def make_replicas(name: str = "auto", strategy=None):
    """The replicas for `runtime.strategy` on the current Keras backend.

    Args:
        name: "auto" (all local devices when there are several), "none",
            "mirrored" or "multi_worker" (TensorFlow only).
        strategy: an explicit `tf.distribute.Strategy` (TensorFlow only).

    Raises:
        ValueError: an unknown name; "multi_worker" or a `strategy` under a
            backend other than TensorFlow.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        from trainer import strategy as strategy_lib

        return TensorFlowReplicas(strategy if strategy is not None else strategy_lib.make_strategy(name))
    if strategy is not None:
        raise ValueError(
            f"`strategy` is a tf.distribute.Strategy and needs KERAS_BACKEND=tensorflow; the backend is "
            f"{backend!r}. Leave it unset (runtime.strategy chooses keras.distribution.DataParallel)."
        )
    if name == "multi_worker":
        raise ValueError(
            f"`runtime.strategy='multi_worker'` is TensorFlow's MultiWorkerMirroredStrategy; multi-host "
            f"training on the {backend} backend is not supported. Use `--backend tensorflow`, or train on "
            "the devices of one host (`--strategy auto`)."
        )
    if name not in ("auto", "none", "mirrored"):
        raise ValueError(
            f"`runtime.strategy` must be 'auto', 'none', 'mirrored' or 'multi_worker'. Received: {name!r}."
        )
    devices = keras.distribution.list_devices()
    if name == "mirrored" or (name == "auto" and len(devices) > 1):
        distribution = keras.distribution.DataParallel(devices=devices)
        logger.info("Distribution: keras.distribution.DataParallel over %d devices (%s).", len(devices), backend)
        return KerasReplicas(distribution)
    logger.info("Distribution: one device (%s, %s).", devices[0] if devices else "cpu", backend)
    return KerasReplicas(None)
