"""Shared by the kill -9 resume tests: interrupt a training run after a mid-epoch backup."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from trainer.callbacks import read_backup_state


def kill_after_mid_epoch_backup(victim: subprocess.Popen, run_dir: str, timeout_s: float) -> dict:
    """SIGKILLs `victim` once its backup in `run_dir` is inside the second epoch.

    Returns the backup state it was killed at; fails the test if the run
    finished or stalled before such a backup.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and victim.poll() is None:
        try:
            state = read_backup_state(os.path.join(run_dir, "backup"))
        except (OSError, ValueError, KeyError):
            state = None
        if state and state["epoch"] >= 1 and state["step_in_epoch"] > 0:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            return state
        time.sleep(0.02)
    victim.kill()
    pytest.fail("the run to interrupt finished or stalled before a mid-epoch backup")
