"""Distributed training: MirroredStrategy on 2 logical CPUs, and 2-process multi-worker.

Both need fresh processes: logical devices and the collective runtime must be
configured before TensorFlow initialises.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _validation import reference_validation

from trainer.synthetic import write_color_dataset

# Sync BN over 2 replicas x 2 clips sees the same 4 clips as one device with
# batch 4; dropout is 0 and the data order is identical, so only float
# summation order differs.
_MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    from trainer import configs, presets
    from trainer.train import train

    data_dir, out_dir = sys.argv[1], sys.argv[2]

    class StepLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    results = {}
    for name, strategy, per_replica in (
        ("single", tf.distribute.get_strategy(), 4),
        ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 2),
    ):
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), [
            f"data.batch_size={per_replica}", "model.sync_batchnorm=true", "model.dropout=0",
            "train.epochs=2", "train.steps_per_epoch=3", "data.validation_split=none",
        ])
        recorder = StepLosses()
        result = train(config, data_dir, f"{out_dir}/{name}", strategy=strategy, verbose=0,
                       extra_callbacks=[recorder])
        results[name] = {"losses": recorder.losses, "replicas": result.num_replicas,
                         "global_batch": result.global_batch_size}
    print(json.dumps(results))
    """
)


# Validation under MirroredStrategy: 2 replicas x 2 clips, 7 validation clips.
# Synchronised BN: without it each replica keeps the moving statistics of its
# own half batches, and the replicas validate with other statistics than the
# saved model holds.
_MIRRORED_VALIDATION_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from trainer import configs, presets
    from trainer.train import train

    data_dir, run_dir = sys.argv[1], sys.argv[2]
    config = configs.apply_overrides(presets.get_preset("tiny_cpu"), [
        "data.batch_size=2", "train.epochs=1", "train.steps_per_epoch=3", "model.sync_batchnorm=true",
    ])
    result = train(config, data_dir, run_dir, strategy=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                   verbose=0)
    print(json.dumps({"history": result.history, "replicas": result.num_replicas}))
    """
)


def _environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _free_ports(count: int) -> list[int]:
    sockets = []
    for _ in range(count):
        handle = socket.socket()
        handle.bind(("127.0.0.1", 0))
        sockets.append(handle)
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


# 7 validation clips in shards of 3 and 4: no global batch divides them, and
# the two workers hold different numbers.
NUM_VALIDATION = 7


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    # Two shards per split: one per worker.
    return write_color_dataset(
        str(tmp_path_factory.mktemp("color_data")), num_train=24, num_validation=NUM_VALIDATION
    )


@pytest.mark.slow
def test_mirrored_two_devices_matches_one_device(data_dir, tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT, data_dir, str(tmp_path)],
        capture_output=True, text=True, env=_environment(), timeout=400,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.strip().splitlines()[-1])
    single, mirrored = results["single"], results["mirrored"]
    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert single["global_batch"] == mirrored["global_batch"] == 4
    assert len(single["losses"]) == len(mirrored["losses"]) == 6
    # Tolerance: float32 summation order over 6 SGD steps of a tiny net.
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=2e-3, atol=1e-4)


def _assert_validation_scores_every_clip(history: dict, run_dir: str, data_dir: str) -> None:
    reference = reference_validation(run_dir, data_dir)
    assert reference["num_examples"] == NUM_VALIDATION
    assert history["val_top1"][-1] == pytest.approx(reference["val_top1"], abs=1e-6)
    assert history["val_loss"][-1] == pytest.approx(reference["val_loss"], rel=1e-4)


@pytest.mark.slow
def test_mirrored_validation_scores_every_clip_once(data_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_VALIDATION_SCRIPT, data_dir, run_dir],
        capture_output=True, text=True, env=_environment(), timeout=400,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    _assert_validation_scores_every_clip(result["history"], run_dir, data_dir)


@pytest.mark.slow
def test_two_process_multi_worker_run_completes_and_workers_agree(data_dir, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    run_dir = str(tmp_path / "run")
    processes = []
    for index in range(2):
        environment = _environment()
        environment["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        command = [
            sys.executable, "-m", "selfy_cli.main", "train", "--preset", "tiny_cpu",
            "--data", data_dir, "--out", run_dir, "--strategy", "multi_worker",
            "--set", "data.batch_size=2", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=3",
            "--set", "train.backup_every_steps=2",
            # The same BN moving statistics on both workers, as the saved model's.
            "--set", "model.sync_batchnorm=true",
        ]
        processes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        )
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=400)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    chief, worker = outputs
    assert chief["num_replicas"] == worker["num_replicas"] == 2
    assert chief["global_batch_size"] == 4
    assert chief["global_step"] == worker["global_step"] == 6
    for key in ("loss", "top1", "val_loss", "val_top1"):
        np.testing.assert_allclose(worker["history"][key], chief["history"][key], rtol=1e-5, err_msg=key)
    # Only the chief writes checkpoints, logs and CSV into the run directory;
    # the other worker keeps just its own backup.
    assert os.path.isfile(os.path.join(run_dir, "checkpoints", "last.keras"))
    assert os.path.isfile(os.path.join(run_dir, "history.csv"))
    assert os.path.isfile(os.path.join(run_dir, "backup", "backup.npz"))
    assert os.path.isfile(os.path.join(run_dir, "backup", "worker-1", "backup.npz"))
    # Both workers' shards, every clip once, though worker 0 holds 3 clips and worker 1 holds 4.
    _assert_validation_scores_every_clip(chief["history"], run_dir, data_dir)
