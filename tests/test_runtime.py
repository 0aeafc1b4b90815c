"""Tests of selfy_tf.runtime: TensorFlow environment defaults."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from selfy_tf import runtime

_CPU_ALLOCATOR_PEAK = """
from selfy_tf.runtime import set_tensorflow_environment_defaults
set_tensorflow_environment_defaults()
import tensorflow as tf
tf.ones([256, 256]) * 2.0
try:
    print(tf.config.experimental.get_memory_info("CPU:0")["peak"])
except ValueError:  # only the BFC allocator keeps statistics
    print("no-statistics")
"""


def _run(code: str, **environment: str | None) -> str:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for name, value in environment.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_defaults_fill_only_unset_variables(monkeypatch, caplog):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    with caplog.at_level(logging.WARNING, logger="selfy_tf.runtime"):
        added = runtime.set_tensorflow_environment_defaults()
    assert added == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
    # TensorFlow is already imported in the test process: the call says it is too late.
    assert "TF_CPP_MIN_LOG_LEVEL" in caplog.text and "before importing TensorFlow" in caplog.text


def test_nothing_to_set_is_silent(monkeypatch, caplog):
    for name, value in runtime.TENSORFLOW_ENVIRONMENT_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="selfy_tf.runtime"):
        assert runtime.set_tensorflow_environment_defaults() == {}
    assert caplog.text == ""


@pytest.mark.parametrize(
    "setting, onednn, uses_bfc",
    [(None, "0", True), ("false", "0", False), (None, "1", True)],
    ids=["default", "user-disabled", "default-onednn"],
)
def test_cpu_allocator_follows_the_defaults(setting, onednn, uses_bfc):
    # oneDNN (on by default on AVX-512/AMX CPUs) brings its own BFC-based CPU allocator,
    # which keeps statistics whatever TF_CPU_ALLOCATOR_USE_BFC says; only with oneDNN off
    # does the setting alone pick the allocator, so the "disabled" case pins oneDNN off.
    output = _run(
        _CPU_ALLOCATOR_PEAK, TF_CPU_ALLOCATOR_USE_BFC=setting, TF_ENABLE_ONEDNN_OPTS=onednn
    )
    if uses_bfc:
        # The op above allocated two 256x256 float32 tensors through the BFC allocator.
        assert int(output) >= 256 * 256 * 4
    else:
        assert output == "no-statistics"


def test_selfy_command_sets_the_defaults_on_import():
    code = "import os, selfy_cli.main; print(os.environ['TF_CPU_ALLOCATOR_USE_BFC'])"
    assert _run(code, TF_CPU_ALLOCATOR_USE_BFC=None) == "true"
