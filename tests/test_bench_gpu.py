"""Tests of benchmarks/bench_gpu.py: its fixed weights and the CPU smoke configuration.

The PyTorch STSS it times (`torch_reference.stss_all_pairs`) is tested in test_weights.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _jax import compilation_cache

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import bench_gpu  # noqa: E402


def test_fixed_weights_do_not_depend_on_variable_order():
    first = bench_gpu._fixed_value("model/layer1_0_conv1/kernel", (3, 3, 4, 8), seed=0)
    again = bench_gpu._fixed_value("model/layer1_0_conv1/kernel", (3, 3, 4, 8), seed=0)
    other = bench_gpu._fixed_value("model/layer1_0_conv2/kernel", (3, 3, 4, 8), seed=0)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    gamma = bench_gpu._fixed_value("model/bn3/gamma", (16,), seed=0)
    assert gamma.min() > 0  # zero-initialised batch norms get a value too


def _run_bench(*arguments: str, cache_dir: Path) -> dict:
    # The two runs share JAX's persistent compilation cache: the second
    # loads the inference programs the first compiled.
    env = {**os.environ, "KERAS_BACKEND": "jax", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           **compilation_cache(cache_dir)}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--smoke", *arguments],
        capture_output=True, text=True, env=env, timeout=600, cwd=BENCHMARKS,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_smoke_configuration_runs_every_case_on_cpu(tmp_path):
    reference = tmp_path / "reference.npz"
    made = _run_bench("--make-reference", "--reference", str(reference), cache_dir=tmp_path / "jax_cache")
    assert made["reference_file"] == str(reference) and reference.exists()
    results = _run_bench("--reference", str(reference), "--torch-compile", "off", cache_dir=tmp_path / "jax_cache")
    errors = {key: value for key, value in results.items() if key.endswith("_error")}
    assert errors == {}
    assert results["configuration"] == "smoke" and results["keras_backend"] == "jax"
    assert results["correctness_weights_checksum_equal"] is True
    assert results["correctness_float32_max_rel_diff"] <= 1e-5
    assert 0.0 <= results["correctness_bf16_top1_agreement"] <= 1.0
    for case in ("stss_fwd", "stss_fwdbwd", "block_fwdbwd", "train_step", "infer_b1", "infer_b2"):
        assert results[f"jax_{case}_median_ms"] > 0
        assert results[f"torch_{case}_median_ms"] > 0
        assert results[f"{case}_time_ratio"] == pytest.approx(
            results[f"jax_{case}_median_ms"] / results[f"torch_{case}_median_ms"], rel=1e-2, abs=1e-3
        )
