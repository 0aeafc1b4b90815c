"""Test modules of the backend-agnostic core, run again under Keras's JAX backend.

Each test here runs pytest in a subprocess with `KERAS_BACKEND=jax`, so that
the one test command covers both backends and its parallel workers overlap
the JAX runs with the rest of the suite. The modules skip, with their
reasons, the cases that exist on TensorFlow only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest_under_jax(request: pytest.FixtureRequest, *arguments: str) -> None:
    """Runs `pytest -q ARGUMENTS` under JAX on the CPU; fails with its report unless all passed."""
    # Not the PYTEST_* variables of this run (its xdist worker, its current test).
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    environment.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *arguments]
    if request.config.getoption("--run-large"):
        command.append("--run-large")
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO, timeout=1100)
    report = completed.stdout + completed.stderr
    assert completed.returncode == 0, report[-6000:]
    summary = completed.stdout.strip().splitlines()[-1]
    assert re.search(r"\b[1-9]\d* passed", summary) and "failed" not in summary and "error" not in summary, summary


@pytest.mark.slow
def test_stss_batch_norm_block_and_weights_under_jax(request):
    """The STSS op, the exact batch norm, the block's generic path against the
    TensorFlow fast paths' twins, weight loading and the official parity."""
    _pytest_under_jax(request, "tests/test_backends.py", "tests/test_stss.py", "tests/test_weights.py")


@pytest.mark.slow
def test_optimizer_and_schedules_under_jax(request):
    """TorchSGD against the NumPy torch reference, and the schedules."""
    _pytest_under_jax(request, "tests/test_trainer_optimizer.py", "-k", "TorchSGD or Schedules")
