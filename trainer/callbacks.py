"""Callbacks and state files that make training resumable and observable.

`Backup` goes beyond `keras.callbacks.BackupAndRestore`, which restores the
epoch only (a partial epoch is replayed from its start) and overwrites its
file in place. Here one `.npz` file holds every model, optimizer and metric
variable plus the progress (epoch, step within the epoch, history, best
score). It is written every `every_steps` steps and at each epoch end, to a
temporary name and then `os.replace`d, so a `kill -9` at any moment leaves
either the previous or the new backup. On restart the trainer restores it,
skips the batches of the interrupted epoch that were already trained on
(the input pipeline is a deterministic function of the epoch), and restores
the epoch's running metrics, so the run continues where it stopped.

`ProgressBar` shows a live bar within each epoch (training steps, then
validation steps) on stderr, for interactive runs; it is erased at the end
of the epoch, which the trainer logs as one line.

`TrainingLogger` writes TensorBoard scalars (loss, top-1/top-5, lr, clips/s,
gradient norm) and `history.csv`; only the chief worker gets one. TensorBoard
files are written with `tf.summary`, imported when first needed: where
TensorFlow is not installed (training on JAX) the run has no TensorBoard
scalars and says so once; `history.csv` holds the epoch figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
import time
from typing import Any

import keras
import numpy as np

from selfy_tf.files import atomic_path, atomic_write_text
from selfy_tf.run_dir import BACKUP_FILE

logger = logging.getLogger(__name__)

__all__ = ["Backup", "ProgressBar", "TrainingLogger", "load_backup", "save_backup", "write_history_csv"]

_STATE_KEY = "__state__"


def _variable_groups(model: keras.Model) -> dict[str, list]:
    optimizer = model.optimizer
    return {
        "model": list(model.variables),
        "optimizer": list(optimizer.variables) if optimizer is not None else [],
        "metrics": [variable for metric in model.metrics for variable in metric.variables],
    }


# Keras numbers the auto-generated names of a process's objects
# (`seed_generator`, `seed_generator_4`), so the same model built after
# another in one process has other variable paths: compare them without
# those numbers (shapes are still checked one by one).
_AUTO_NUMBER = re.compile(r"_\d+(?=[/_]|$)")


def _same_variables(stored_paths: list[str], current_paths: list[str]) -> bool:
    return [_AUTO_NUMBER.sub("", path) for path in stored_paths] == [
        _AUTO_NUMBER.sub("", path) for path in current_paths
    ]


def _read(variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def save_backup(directory: str, model: keras.Model, state: dict[str, Any], include_metrics: bool) -> str:
    """Writes `directory/backup.npz` atomically; returns its path.

    Args:
        directory: backup directory (created).
        model: a compiled model whose optimizer is built.
        state: JSON-serialisable progress (epoch, step, history, ...).
        include_metrics: also store the running metric variables (needed
            when the backup is taken inside an epoch).
    """
    os.makedirs(directory, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    paths: dict[str, list[str]] = {}
    for group, variables in _variable_groups(model).items():
        if group == "metrics" and not include_metrics:
            continue
        paths[group] = [variable.path for variable in variables]
        for index, variable in enumerate(variables):
            arrays[f"{group}/{index:05d}"] = _read(variable)
    payload = json.dumps({"state": state, "paths": paths})
    arrays[_STATE_KEY] = np.frombuffer(payload.encode("utf-8"), dtype=np.uint8)
    path = os.path.join(directory, BACKUP_FILE)
    with atomic_path(path, suffix=".npz") as temporary:
        with open(temporary, "wb") as stream:
            np.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
    return path


def read_backup_state(directory: str) -> dict[str, Any] | None:
    """The progress stored in `directory/backup.npz`, or None if there is none."""
    path = os.path.join(directory, BACKUP_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as archive:
        return json.loads(archive[_STATE_KEY].tobytes().decode("utf-8"))["state"]


def load_backup(directory: str, model: keras.Model, restore_metrics: bool = False) -> dict[str, Any] | None:
    """Restores model and optimizer variables from `directory/backup.npz`.

    Returns:
        The stored progress dict, or None when there is no backup.

    Raises:
        ValueError: the backup was written by a different model (variable
            paths or shapes differ; the message names the first difference).
    """
    path = os.path.join(directory, BACKUP_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as archive:
        meta = json.loads(archive[_STATE_KEY].tobytes().decode("utf-8"))
        for group, variables in _variable_groups(model).items():
            if group == "metrics" and not restore_metrics:
                continue
            stored_paths = meta["paths"].get(group)
            if stored_paths is None:
                continue
            current_paths = [variable.path for variable in variables]
            if not _same_variables(stored_paths, current_paths):
                difference = next(
                    (
                        (stored, current)
                        for stored, current in zip(stored_paths, current_paths)
                        if stored != current
                    ),
                    (len(stored_paths), len(current_paths)),
                )
                raise ValueError(
                    f"Backup {path} does not fit this model ({group} variables differ: "
                    f"{difference[0]!r} in the backup vs {difference[1]!r} here). Resume with "
                    "the same config, or use a new run directory."
                )
            for index, variable in enumerate(variables):
                value = archive[f"{group}/{index:05d}"]
                if tuple(value.shape) != tuple(variable.shape):
                    raise ValueError(
                        f"Backup {path}: `{variable.path}` has shape {tuple(value.shape)} in the "
                        f"backup but {tuple(variable.shape)} in the model."
                    )
                variable.assign(value)
    return meta["state"]


def write_history_csv(path: str, history: dict[str, list[float]]) -> None:
    """Rewrites `history.csv` (one row per epoch) atomically from `history`."""
    keys = ["epoch"] + sorted(key for key in history if key != "epoch")
    num_rows = max((len(values) for values in history.values()), default=0)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(keys)
    for row in range(num_rows):
        values = []
        for key in keys:
            column = history.get(key, [])
            values.append(column[row] if row < len(column) else "")
        writer.writerow(values)
    atomic_write_text(path, buffer.getvalue())


class Backup(keras.callbacks.Callback):
    """Saves a resumable backup every `every_steps` steps within an epoch.

    The epoch-end backup is written by the trainer (it knows the history and
    best score); this callback covers the steps in between. The epoch's last
    step gets no backup of its own: a run killed after it (in validation, or
    while writing checkpoints) would resume with no training step left to
    produce the epoch's logs, and its history would lose that epoch's row. It
    resumes from the previous backup instead and replays the steps since.

    Args:
        directory: where `backup.npz` goes.
        every_steps: int, steps between backups.
        steps_per_epoch: int, training steps of a whole epoch.
        epoch: the epoch this `fit` call trains.
        first_step: steps of this epoch already done before this `fit` call
            (skipped in the input pipeline); `on_train_batch_end`'s `batch`
            counts from there.
        state: the progress dict to extend and save.
        restore_metric_state: a backup directory whose running metrics are
            restored at the start of the epoch (resuming mid-epoch), or None.
    """

    def __init__(
        self,
        directory: str,
        every_steps: int,
        steps_per_epoch: int,
        epoch: int,
        first_step: int,
        state: dict[str, Any],
        restore_metric_state: str | None = None,
    ):
        super().__init__()
        self.directory = directory
        self.every_steps = int(every_steps)
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = int(epoch)
        self.first_step = int(first_step)
        self.state = state
        self.restore_metric_state = restore_metric_state

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets the metrics just before this call; put back the
        # running sums of the steps done before the interruption.
        if self.restore_metric_state:
            load_backup(self.restore_metric_state, self.model, restore_metrics=True)

    def on_train_batch_end(self, batch, logs=None):
        step_in_epoch = self.first_step + batch + 1
        if step_in_epoch % self.every_steps or step_in_epoch >= self.steps_per_epoch:
            return
        state = dict(self.state, epoch=self.epoch, step_in_epoch=step_in_epoch)
        save_backup(self.directory, self.model, state, include_metrics=True)
        logger.debug("Backup at epoch %d step %d.", self.epoch, step_in_epoch)


class TrainingLogger(keras.callbacks.Callback):
    """TensorBoard scalars: per-step loss/lr/clips-per-sec and per-epoch metrics.

    Args:
        log_dir: TensorBoard directory (`RUN/logs`).
        global_batch_size: clips per step, for clips/s.
        every_steps: write step scalars every this many steps.
        learning_rate_fn: callable(step) -> learning rate, for the `lr` scalar.
    """

    def __init__(self, log_dir: str, global_batch_size: int, every_steps: int, learning_rate_fn):
        super().__init__()
        self.log_dir = log_dir
        self.global_batch_size = int(global_batch_size)
        self.every_steps = int(every_steps)
        self.learning_rate_fn = learning_rate_fn
        self._writer = None
        self._no_tensorboard = False
        self._epoch_start = None
        self._epoch_steps = 0
        self._window_start = None
        self._window_steps = 0

    def _get_writer(self):
        if self._writer is None and not self._no_tensorboard:
            try:
                import tensorflow as tf
            except ImportError:
                self._no_tensorboard = True
                logger.warning(
                    "No TensorBoard scalars in %s: TensorFlow is not installed (history.csv has "
                    "the epoch figures).",
                    self.log_dir,
                )
                return None
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "train"))
        return self._writer

    def _write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        writer = self._get_writer()
        if writer is None:
            return
        import tensorflow as tf

        with writer.as_default(step=step):
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def _global_step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._window_start = self._epoch_start
        self._epoch_steps = 0
        self._window_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps += 1
        self._window_steps += 1
        if self._window_steps < self.every_steps:
            return
        now = time.perf_counter()
        step = self._global_step()
        clips_per_sec = self._window_steps * self.global_batch_size / max(now - self._window_start, 1e-9)
        scalars = {f"step/{name}": float(value) for name, value in (logs or {}).items()}
        scalars["step/lr"] = float(self.learning_rate_fn(step))
        scalars["step/clips_per_sec"] = clips_per_sec
        norm = getattr(self.model.optimizer, "gradient_norm", None)
        if norm is None and hasattr(self.model.optimizer, "inner_optimizer"):
            norm = getattr(self.model.optimizer.inner_optimizer, "gradient_norm", None)
        if norm is not None:
            scalars["step/gradient_norm"] = float(keras.ops.convert_to_numpy(norm))
        self._write_scalars(step, scalars)
        self._window_start = now
        self._window_steps = 0

    def epoch_summary(self, epoch: int, logs: dict[str, float]) -> dict[str, float]:
        """Writes the epoch's scalars (called by the trainer); returns extra log values."""
        elapsed = max(time.perf_counter() - (self._epoch_start or time.perf_counter()), 1e-9)
        extra = {
            "lr": float(self.learning_rate_fn(self._global_step() - 1)),
            "clips_per_sec": self._epoch_steps * self.global_batch_size / elapsed,
        }
        self._write_scalars(epoch + 1, {f"epoch/{name}": float(value) for name, value in {**logs, **extra}.items()})
        if self._writer is not None:
            self._writer.flush()
        return extra

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ProgressBar(keras.callbacks.Callback):
    """A tqdm bar on stderr over one epoch's training steps, then its validation steps.

    Each bar is erased when it ends (`leave=False`): the trainer logs the
    finished epoch as one line, so a terminal shows each epoch once.

    Args:
        epoch: the epoch (0-based) this `fit` call trains.
        epochs: `train.epochs`.
        steps_per_epoch: training steps of a whole epoch.
        first_step: steps of this epoch done before (a resumed epoch).
        validation_steps: validation steps of this epoch (0: none).
    """

    # Metrics shown next to the bar, when the logs have them.
    SHOWN = ("loss", "top1")

    def __init__(self, epoch: int, epochs: int, steps_per_epoch: int, first_step: int = 0, validation_steps: int = 0):
        super().__init__()
        self.epoch = int(epoch)
        self.epochs = int(epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.first_step = int(first_step)
        self.validation_steps = int(validation_steps)
        self._bar = None

    def _open(self, total: int, initial: int, description: str) -> None:
        from tqdm import tqdm

        self._close()
        self._bar = tqdm(
            total=total, initial=initial, desc=description, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True
        )

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _advance(self, logs) -> None:
        if self._bar is None:
            return
        shown = {name: f"{float(logs[name]):.4g}" for name in self.SHOWN if name in (logs or {})}
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def on_epoch_begin(self, epoch, logs=None):
        self._open(self.steps_per_epoch, self.first_step, f"Epoch {self.epoch + 1}/{self.epochs}")

    def on_train_batch_end(self, batch, logs=None):
        self._advance(logs)

    def on_test_begin(self, logs=None):
        if self.validation_steps:
            self._open(self.validation_steps, 0, f"Epoch {self.epoch + 1}/{self.epochs} validation")

    def on_test_batch_end(self, batch, logs=None):
        self._advance(logs)

    def on_test_end(self, logs=None):
        self._close()

    def on_epoch_end(self, epoch, logs=None):
        self._close()

    def on_train_end(self, logs=None):
        self._close()
