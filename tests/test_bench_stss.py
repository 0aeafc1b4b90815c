"""Tests of benchmarks/bench_stss.py: its PyTorch baseline (`--torch`) and useful-work figures, on tiny shapes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason='the PyTorch baseline needs torch: pip install -e ".[test]"')

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_stss  # noqa: E402


@pytest.fixture
def keep_thread_settings(monkeypatch):
    """The benchmark sets TensorFlow's and PyTorch's threads: leave this process's as they were."""
    monkeypatch.setattr(bench_stss, "limit_threads", lambda threads: None)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_useful_work_of_the_reference_shape():
    """DESIGN.md §2: 0.325 GFLOP of useful multiply-adds at B=2, T=8, 14x14x128, window 5x9x9."""
    assert bench_stss._stss_useful_gflop(bench_stss.REFERENCE) == pytest.approx(0.325, abs=5e-4)


def test_quick_run_with_the_torch_baseline(keep_thread_settings, capsys):
    assert bench_stss.main(["--quick", "--torch", "--num-warmup", "1", "--repeats", "1", "--budget-s", "0"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {key: value for key, value in results.items() if "error" in key} == {}
    batch, frames, height, width, channels = results["stss_shape"]
    length, rows, cols = results["window"]
    useful = 2 * batch * frames * height * width * length * rows * cols * channels / 1e9
    assert results["stss_useful_gflop_fwd"] == pytest.approx(useful, abs=1e-4)
    assert results["stss_useful_gflop_fwdbwd"] == pytest.approx(3 * useful, abs=1e-4)
    assert results["matmul_float32_gflops"] > 0
    for case in ("torch_stss_all_pairs", "torch_stss_definition", "torch_selfy_block"):
        for phase in ("fwd", "fwdbwd"):
            before, after = results[f"{case}_{phase}_before_ms"], results[f"{case}_{phase}_after_ms"]
            assert before > 0 and after > 0
            assert results[f"{case}_{phase}_ms"] == pytest.approx((before + after) / 2, abs=1e-3)
    for phase in ("fwd", "fwdbwd"):
        ours, official = results[f"stss_matmul_graph_jit_{phase}_ms"], results[f"torch_stss_all_pairs_{phase}_ms"]
        # Times are rounded to 1 µs and ratios to 4 decimals.
        assert results[f"stss_over_torch_{phase}_ratio"] == pytest.approx(ours / official, rel=1e-2, abs=1e-4)
        block_ratio = results["selfy_block_graph_" + phase + "_ms"] / results[f"torch_selfy_block_{phase}_ms"]
        assert results[f"selfy_block_over_torch_{phase}_ratio"] == pytest.approx(block_ratio, rel=1e-2, abs=1e-4)
        gflops = results[f"stss_useful_gflop_{phase}"] / (ours / 1e3)
        assert results[f"stss_matmul_graph_jit_{phase}_peak_fraction"] == pytest.approx(
            gflops / results["matmul_float32_gflops"], rel=0.05, abs=1e-4
        )
