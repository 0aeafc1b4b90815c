"""Tests of benchmarks/bench_train.py: the PyTorch reference's training step (`--torch-models`) on tiny_cpu."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason='the PyTorch baseline needs torch: pip install -e ".[test]"')

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_train  # noqa: E402

TINY_RUN = ["--models", "tiny_cpu", "--xla", "off", "--precision", "float32", "--warmup", "1",
            "--iterations", "1", "--input-batches", "0"]


@pytest.mark.slow  # ~10-20 s: builds and traces the tiny_cpu training step
def test_torch_step_is_timed_around_ours(monkeypatch, capsys):
    monkeypatch.setattr(bench_train, "limit_threads", lambda threads: None)
    threads = torch.get_num_threads()
    try:
        assert bench_train.main([*TINY_RUN, "--torch-models", "tiny_cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {key: value for key, value in results.items() if "error" in key} == {}
    torch_key = "train_torch_tiny_cpu_float32_step_time"
    before, after = results[f"{torch_key}_before_ms"], results[f"{torch_key}_after_ms"]
    assert before > 0 and after > 0
    assert results[f"{torch_key}_ms"] == pytest.approx((before + after) / 2, abs=0.01)
    ours = results["train_tiny_cpu_xla_off_float32_step_time_ms"]
    assert results["tiny_cpu_over_torch_step_time_ratio"] == pytest.approx(
        ours / results[f"{torch_key}_ms"], rel=1e-2, abs=1e-4
    )
    assert "input_tiny_cpu_clips_per_sec" not in results  # --input-batches 0


def test_torch_step_trains_the_reference():
    """The timed PyTorch step is a real SGD step: the loss on its fixed batch goes down."""
    from trainer import configs, presets

    config = configs.resolve_model(configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.num_classes=4"]))
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(0)
        step = bench_train._torch_training_step(config, threads=1)
        losses = [step() for _ in range(8)]
    finally:
        torch.set_num_threads(threads)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--torch-models", "selfy_tsm_r50"], "must be among --models"),
        (["--xla", "on", "--torch-models", "tiny_cpu"], "float32, XLA-off step"),
    ],
)
def test_torch_models_bad_arguments(arguments, message, capsys):
    with pytest.raises(SystemExit) as raised:
        bench_train._parse_args([*TINY_RUN, *arguments])
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
