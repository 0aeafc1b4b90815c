"""The run directory written by `selfy train` and read by the other commands.

    RUN/config.yaml            the resolved ExperimentConfig
    RUN/labels.txt             class names, line i = class i
    RUN/checkpoints/best.keras best model so far (by `train.monitor`)
    RUN/checkpoints/last.keras model after the last finished epoch
    RUN/backup/                resumable state (weights, optimizer, progress)
    RUN/logs/                  TensorBoard: loss, top-1/top-5, lr, clips/s
    RUN/history.csv            one row per finished epoch
    RUN/result.json            what `selfy train` reports at the end
    RUN/eval.json              written by `selfy eval`

Every file is written atomically (`selfy_tf.files`), so a crash never leaves
a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["RunPaths"]


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Paths inside one run directory."""

    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def labels(self) -> str:
        return os.path.join(self.root, "labels.txt")

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def best_checkpoint(self) -> str:
        return os.path.join(self.checkpoints, "best.keras")

    @property
    def last_checkpoint(self) -> str:
        return os.path.join(self.checkpoints, "last.keras")

    @property
    def backup(self) -> str:
        return os.path.join(self.root, "backup")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def history(self) -> str:
        return os.path.join(self.root, "history.csv")

    @property
    def result(self) -> str:
        return os.path.join(self.root, "result.json")

    @property
    def eval_json(self) -> str:
        return os.path.join(self.root, "eval.json")

    def make_dirs(self) -> None:
        for path in (self.root, self.checkpoints, self.backup, self.logs):
            os.makedirs(path, exist_ok=True)

