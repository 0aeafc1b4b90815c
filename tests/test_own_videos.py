"""A user's own videos, the README's way: folders of MP4s -> TFRecords -> `selfy train
--preset small_videos_cpu` -> `selfy eval` on held-out clips must recognise the motion.

The clips come from `selfy_tf.datasets.user_videos`, which the shipped model
never saw; the held-out set is drawn with another seed. Fewer clips and 160
of the preset's 300 steps, to fit in CI (about 90 s);
benchmarks/README.md ("Own videos") has the full-size figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from selfy_tf.datasets import user_videos

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _selfy(*argv: str) -> str:
    environment = {**os.environ, "PYTHONPATH": REPOSITORY, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "selfy_cli.main", *argv],
        capture_output=True, text=True, env=environment, timeout=900,
    )
    assert result.returncode == 0, f"selfy {' '.join(argv)} failed:\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
def test_small_videos_cpu_recognises_motion_on_held_out_clips(tmp_path):
    user_videos.write_folder(tmp_path / "videos", clips_per_class=8, seed=0)
    user_videos.write_folder(tmp_path / "held_out_videos", clips_per_class=6, seed=1)
    data, held_out, run = (str(tmp_path / name) for name in ("data", "held_out", "run"))
    _selfy(
        "tfrecords", "build", "--format", "folders", "--root", str(tmp_path / "videos"),
        "--out", data, "--validation-fraction", "0.2", "--no-progress",
    )
    _selfy(
        "tfrecords", "build", "--format", "folders", "--root", str(tmp_path / "held_out_videos"),
        "--out", held_out, "--split", "validation", "--no-progress",
    )
    # 8 epochs of 8 clips instead of the preset's 15 of 16: a quarter of its
    # training, to fit CI.
    trained = json.loads(_selfy(
        "train", "--preset", "small_videos_cpu", "--data", data, "--out", run, "--epochs", "8",
        "--set", "data.batch_size=8", "--json",
    ).strip().splitlines()[-1])
    # Too few validation clips to pick an epoch on: best.keras is the last one.
    assert trained["best_metric"] == {"name": "last", "value": None, "epoch": 8}
    report = json.loads(_selfy("eval", run, "--data", held_out).strip().splitlines()[-1])
    assert report["num_examples"] == 6 * len(user_videos.CLASS_NAMES)
    # Chance is 0.2; the motion-only classes cannot be told apart by look.
    assert report["top1"] >= 0.5, report
