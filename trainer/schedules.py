"""Learning-rate schedules evaluated at every step.

The official recipe decays the learning rate by 0.1 at epochs 30 and 40,
changing it at epoch boundaries; `EpochStepDecay` does that from the step
counter (`epoch = step / steps_per_epoch`), with an optional linear warm-up.
`EpochCosineDecay` is the cosine alternative. Both are written in
`keras.ops`, so they run on every Keras backend.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

__all__ = ["EpochCosineDecay", "EpochStepDecay", "make_schedule", "scaled_learning_rate"]


def scaled_learning_rate(base_lr: float, base_batch_size: int, global_batch_size: int) -> float:
    """Linear scaling rule: `base_lr` is for `base_batch_size` clips per step."""
    return float(base_lr) * float(global_batch_size) / float(base_batch_size)


def _warmup_factor(epoch, warmup_epochs: float):
    """Linear warm-up from ~0 to 1 over `warmup_epochs` (1 when there is none)."""
    if warmup_epochs <= 0:
        return ops.ones((), "float32")
    return ops.minimum(1.0, epoch / warmup_epochs)


class _EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak_lr: float, steps_per_epoch: int, warmup_epochs: float = 0.0):
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be >= 1. Received: steps_per_epoch={steps_per_epoch}.")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)

    def _epoch(self, step):
        # Step k runs with the rate at the start of step k (torch sets it
        # before the epoch's first step); warm-up counts step k as k + 1.
        return ops.cast(step, "float32") / float(self.steps_per_epoch)

    def _warmup(self, step):
        epoch = (ops.cast(step, "float32") + 1.0) / float(self.steps_per_epoch)
        return _warmup_factor(epoch, self.warmup_epochs)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
        }


@keras.saving.register_keras_serializable(package="selfy")
class EpochStepDecay(_EpochSchedule):
    """`peak_lr * decay_rate ** (number of decay epochs passed)`, with warm-up.

    Args:
        peak_lr: float, the rate before any decay.
        steps_per_epoch: int, optimizer steps per epoch.
        decay_epochs: epochs at which the rate is multiplied by `decay_rate`
            (official: (30, 40)); empty for a constant rate.
        decay_rate: float, default 0.1.
        warmup_epochs: float, linear warm-up length in epochs, default 0.

    Example:

    >>> schedule = EpochStepDecay(0.01, steps_per_epoch=10, decay_epochs=(30, 40))
    >>> round(float(schedule(300)), 6)
    0.001
    """

    def __init__(
        self,
        peak_lr: float,
        steps_per_epoch: int,
        decay_epochs: Sequence[float] = (30, 40),
        decay_rate: float = 0.1,
        warmup_epochs: float = 0.0,
    ):
        super().__init__(peak_lr, steps_per_epoch, warmup_epochs)
        self.decay_epochs = tuple(float(epoch) for epoch in decay_epochs)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        epoch = self._epoch(step)
        passed = ops.zeros((), "float32")
        for boundary in self.decay_epochs:
            passed = passed + ops.cast(epoch >= boundary, "float32")
        rate = self.peak_lr * ops.power(self.decay_rate, passed)
        return rate * self._warmup(step)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "decay_epochs": list(self.decay_epochs), "decay_rate": self.decay_rate}


@keras.saving.register_keras_serializable(package="selfy")
class EpochCosineDecay(_EpochSchedule):
    """Cosine decay over `total_epochs` (per step), with warm-up.

    Args:
        peak_lr: float, the rate after warm-up.
        steps_per_epoch: int, optimizer steps per epoch.
        total_epochs: float, length of the run.
        final_lr_fraction: float, the rate ends at `peak_lr * final_lr_fraction`.
        warmup_epochs: float, linear warm-up length, default 0; the cosine
            starts after it.

    Example:

    >>> schedule = EpochCosineDecay(0.1, steps_per_epoch=10, total_epochs=2)
    >>> round(float(schedule(10)), 6)
    0.05
    """

    def __init__(
        self,
        peak_lr: float,
        steps_per_epoch: int,
        total_epochs: float,
        final_lr_fraction: float = 0.0,
        warmup_epochs: float = 0.0,
    ):
        super().__init__(peak_lr, steps_per_epoch, warmup_epochs)
        self.total_epochs = float(total_epochs)
        self.final_lr_fraction = float(final_lr_fraction)

    def __call__(self, step):
        epoch = self._epoch(step)
        length = max(self.total_epochs - self.warmup_epochs, 1e-8)
        progress = ops.clip((epoch - self.warmup_epochs) / length, 0.0, 1.0)
        cosine = 0.5 * (1.0 + ops.cos(math.pi * progress))
        floor = self.final_lr_fraction
        rate = self.peak_lr * (floor + (1.0 - floor) * cosine)
        return rate * self._warmup(step)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "total_epochs": self.total_epochs,
            "final_lr_fraction": self.final_lr_fraction,
        }


def make_schedule(schedule_config, peak_lr: float, steps_per_epoch: int, total_epochs: int):
    """Builds the schedule named by a `ScheduleConfig`."""
    if schedule_config.name == "cosine":
        return EpochCosineDecay(
            peak_lr,
            steps_per_epoch,
            total_epochs,
            final_lr_fraction=schedule_config.final_lr_fraction,
            warmup_epochs=schedule_config.warmup_epochs,
        )
    if schedule_config.name in ("step", "constant"):
        decay_epochs = schedule_config.decay_epochs if schedule_config.name == "step" else ()
        return EpochStepDecay(
            peak_lr,
            steps_per_epoch,
            decay_epochs=decay_epochs,
            decay_rate=schedule_config.decay_rate,
            warmup_epochs=schedule_config.warmup_epochs,
        )
    raise ValueError(
        f"`schedule.name` must be 'step', 'cosine' or 'constant'. Received: {schedule_config.name!r}."
    )
