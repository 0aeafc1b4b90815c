"""Training under Keras's JAX backend, and the in-memory input that needs no TensorFlow.

The NumPy input tests run in-process on any backend; the training runs are
subprocesses under `KERAS_BACKEND=jax` (marked slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _jax import compilation_cache
from _resume import kill_after_mid_epoch_backup

from tfrecords import crop_windows
from trainer import numpy_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- NumPy input --------------------------------------------------------------


def _coded_clip(num_frames: int = 8, height: int = 40, width: int = 48) -> np.ndarray:
    """Channel 0 = frame index x 20, channel 1 = column x 5 (rising left to right)."""
    clip = np.zeros((num_frames, height, width, 3), np.uint8)
    clip[..., 0] = (np.arange(num_frames) * 20)[:, None, None]
    clip[..., 1] = (np.arange(width) * 5)[None, None, :]
    return clip


def _batches(labels, no_flip=(), seed=7, skip=0, steps=4, batch=4):
    frames = np.stack([_coded_clip() for _ in labels])
    return numpy_data.TrainBatches(
        frames, np.asarray(labels), num_classes=3, batch_size=batch, seed=seed, skip_steps=skip,
        num_steps=steps, num_frames=4, crop_size=16, scales=crop_windows.MULTI_SCALE_CROP_SCALES,
        no_flip_classes=no_flip,
    )


class TestNumpyTrainingBatches:
    def test_tsn_segments_crop_and_one_hot(self):
        batches = _batches([0, 1, 2, 0, 1, 2])
        clips, targets = batches[0]
        assert clips.shape == (4, 4, 16, 16, 3) and clips.dtype == np.uint8
        assert targets.shape == (4, 3) and np.array_equal(targets.sum(axis=1), np.ones(4))
        # 8 frames in 4 segments: frame index of segment s is 2s or 2s + 1.
        frame_index = clips[..., 0].astype(np.float64).mean(axis=(2, 3)) / 20
        assert np.allclose(frame_index, np.round(frame_index), atol=0.01)
        assert np.all((frame_index >= 2 * np.arange(4)) & (frame_index <= 2 * np.arange(4) + 1))

    def test_no_flip_classes_are_never_flipped(self):
        batches = _batches([0, 1] * 8, no_flip=(1,), steps=4)
        flipped = {0: 0, 1: 0}
        for index in range(len(batches)):
            clips, targets = batches[index]
            for clip, label in zip(clips, targets.argmax(axis=1)):
                columns = clip[0, 0, :, 1].astype(int)
                rising = columns[-1] > columns[0]
                flipped[int(label)] += int(not rising)
        assert flipped[1] == 0
        assert flipped[0] > 0  # 32 coin flips of p=1/2

    def test_batches_depend_on_seed_and_position_only(self):
        whole = _batches([0, 1, 2, 0, 1], steps=5)
        resumed = _batches([0, 1, 2, 0, 1], skip=2, steps=3)
        for index in range(3):
            np.testing.assert_array_equal(whole[2 + index][0], resumed[index][0])
            np.testing.assert_array_equal(whole[2 + index][1], resumed[index][1])
        other_seed = _batches([0, 1, 2, 0, 1], seed=8, steps=5)
        assert not np.array_equal(whole[0][0], other_seed[0][0])

    def test_each_pass_visits_every_clip_once(self):
        labels = np.arange(6) % 3
        batches = _batches(list(labels), steps=3, batch=4)
        order = [batches._clip_index(position) for position in range(12)]
        assert sorted(order[:6]) == list(range(6)) and sorted(order[6:]) == list(range(6))


class TestCropWindow:
    def test_windows_follow_the_official_rules(self):
        rng = np.random.default_rng(0)
        scales = crop_windows.MULTI_SCALE_CROP_SCALES
        height, width, crop = 120, 160, 112
        # floor(120 * scale) = 120, 105, 90, 79; none within 3 pixels of 112.
        sizes = [120, 105, 90, 79]
        seen = set()
        for _ in range(400):
            top, left, crop_height, crop_width = crop_windows.multi_scale_crop_window_numpy(
                height, width, crop, rng, scales
            )
            i, j = sizes.index(crop_height), sizes.index(crop_width)
            assert abs(i - j) <= 1
            step_x, step_y = (width - crop_width) // 4, (height - crop_height) // 4
            positions = {(x * step_x, y * step_y) for x, y in crop_windows.MULTI_SCALE_CROP_OFFSETS}
            assert (left, top) in positions
            seen.add((crop_height, crop_width))
        assert len(seen) == 10  # 4 + 3 + 3 pairs with |i - j| <= 1

    def test_snapping_to_the_crop_size(self):
        rng = np.random.default_rng(1)
        # floor(256 * 0.875) = 224 exactly; floor(255 * 0.875) = 223 snaps to 224.
        sides = {crop_windows.multi_scale_crop_window_numpy(255, 300, 224, rng)[2] for _ in range(200)}
        assert 224 in sides and 223 not in sides


class TestClipArrays:
    def test_npz_round_trip(self, tmp_path):
        path = str(tmp_path / "clips.npz")
        frames = np.zeros((5, 6, 20, 24, 3), np.uint8)
        np.savez(path, train_frames=frames, train_labels=np.array([0, 1, 0, 1, 2]),
                 validation_frames=frames[:2], validation_labels=np.array([1, 2]),
                 labels=np.array(["a", "b", "c"]))
        arrays = numpy_data.load_clip_arrays(path, num_frames=4)
        assert arrays.labels == ["a", "b", "c"]
        assert arrays.train_frames.shape == (5, 6, 20, 24, 3) and list(arrays.validation_labels) == [1, 2]

    @pytest.mark.parametrize(
        "arrays, message",
        [
            ({"frames": np.zeros((2, 4, 8, 8, 3), np.uint8)}, "has no `train_frames` array"),
            ({"train_frames": np.zeros((2, 4, 8, 8, 3), np.uint8)}, "no `train_labels`"),
            ({"train_frames": np.zeros((2, 4, 8, 8), np.uint8), "train_labels": np.zeros(2, int)},
             r"`train_frames` must be uint8 \[clips, frames, height, width, 3\]. Received: uint8 \(2, 4, 8, 8\)"),
            ({"train_frames": np.zeros((2, 4, 8, 8, 3), np.uint8), "train_labels": np.zeros(3, int)},
             r"`train_labels` must be integers of shape \(2,\)"),
            ({"train_frames": np.zeros((2, 4, 8, 8, 3), np.uint8), "train_labels": np.array([0, 5]),
              "labels": np.array(["a", "b"])}, r"holds label 5, outside \[0, 2\)"),
            ({"train_frames": np.zeros((2, 2, 8, 8, 3), np.uint8), "train_labels": np.zeros(2, int)},
             "have 2 frames but `model.num_frames`=4"),
        ],
    )
    def test_bad_archives_name_file_and_field(self, tmp_path, arrays, message):
        path = str(tmp_path / "bad.npz")
        np.savez(path, **arrays)
        with pytest.raises(ValueError, match=message) as caught:
            numpy_data.load_clip_arrays(path, num_frames=4)
        assert path in str(caught.value)

    def test_unknown_synthetic_name(self):
        with pytest.raises(ValueError, match="Expected 'synthetic:motion'"):
            numpy_data.load_clip_arrays("synthetic:colors", num_frames=4)


# -- Training under JAX (subprocesses) ----------------------------------------

_TINY_SETS = ["train.epochs=2", "train.backup_every_steps=1", "model.num_frames=4", "train.steps_per_epoch=4"]

# Runs `python -m selfy_cli.train` in a process where `import tensorflow` fails.
_WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import sys

    class BlockTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, BlockTensorFlow())
    from selfy_cli.train import main

    sys.exit(main(sys.argv[1:]))
    """
)


def _environment(**extra: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": REPO, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu", **extra,
    }


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_jax_mixed_precision_training_without_tensorflow_then_export(tmp_path, capsys):
    """`selfy train --backend jax` in mixed bfloat16 on in-memory synthetic clips, with
    TensorFlow unimportable; then `selfy export` of that run directory on TensorFlow."""
    run_dir = str(tmp_path / "run")
    arguments = ["--backend", "jax", "--preset", "tiny_cpu", "--data", "synthetic:motion:24:8:32", "--out", run_dir]
    for item in [*_TINY_SETS, "runtime.mixed_precision=mixed_bfloat16"]:
        arguments += ["--set", item]
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TENSORFLOW, *arguments],
        capture_output=True, text=True, env=_environment(), timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = _last_json(completed.stdout)
    assert "No TensorBoard scalars" in completed.stderr
    assert result["backend"] == "jax" and result["epochs_completed"] == 2 and result["global_step"] == 8
    assert len(result["history"]["val_top1"]) == 2 and np.all(np.isfinite(result["history"]["loss"]))
    assert os.path.getsize(result["best_checkpoint"]) > 0 and os.path.exists(os.path.join(run_dir, "history.csv"))

    import tensorflow as tf

    from selfy_cli.main import main
    from selfy_tf.models import with_dtype_policy
    from selfy_tf.run_dir import load_model

    model = load_model(run_dir).model
    assert {variable.dtype for variable in model.trainable_variables} == {"float32"}
    assert {layer.dtype_policy.name for layer in model.layers if layer.weights} == {"mixed_bfloat16"}
    capsys.readouterr()
    status = main(["export", run_dir, "--out", str(tmp_path / "export"), "--dtype-policy", "float32"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frames = np.random.default_rng(2).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    outputs = tf.saved_model.load(summary["path"]).signatures["predict_frames"](frames=tf.constant(frames))
    expected = with_dtype_policy(model, "float32")(frames.astype(np.float32), training=False)
    np.testing.assert_allclose(outputs["logits"].numpy(), np.asarray(expected), atol=1e-5, rtol=0)


def _train_command(data: str, run_dir: str) -> list[str]:
    command = [sys.executable, "-m", "selfy_cli.main", "train", "--backend", "jax", "--preset", "tiny_cpu"]
    command += ["--data", data, "--out", run_dir]
    for item in _TINY_SETS:
        command += ["--set", item]
    return command


@pytest.mark.slow
def test_jax_resume_after_kill_mid_epoch_equals_uninterrupted_run(tmp_path):
    """`selfy train --backend jax` (which restarts the command under JAX), killed
    with SIGKILL after a mid-epoch backup of the second epoch, resumes to the
    history of an uninterrupted run. TFRecords read by tf.data, as on TensorFlow."""
    from trainer.synthetic import write_color_dataset

    data_dir = write_color_dataset(str(tmp_path / "data"), num_classes=4)
    # --backend jax must switch KERAS_BACKEND. The three runs compile the same
    # programs: the uninterrupted run fills JAX's persistent compilation
    # cache and the other two load from it (a third of the time each).
    environment = _environment(KERAS_BACKEND="tensorflow", **compilation_cache(tmp_path / "jax_cache"))
    reference_dir, victim_dir = str(tmp_path / "reference"), str(tmp_path / "victim")
    reference = subprocess.run(_train_command(data_dir, reference_dir), capture_output=True, text=True,
                               env=environment, timeout=500)
    assert reference.returncode == 0, reference.stderr[-3000:]
    victim = subprocess.Popen(_train_command(data_dir, victim_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=environment)
    killed_at = kill_after_mid_epoch_backup(victim, victim_dir, timeout_s=500)
    resumed = subprocess.run(_train_command(data_dir, victim_dir), capture_output=True, text=True,
                             env=environment, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, result = _last_json(reference.stdout), _last_json(resumed.stdout)
    assert expected["backend"] == result["backend"] == "jax"
    assert result["resumed_from"] == {"epoch": killed_at["epoch"], "step_in_epoch": killed_at["step_in_epoch"]}
    assert result["global_step"] == expected["global_step"] == 8
    for key in ("loss", "top1", "val_loss", "val_top1"):
        np.testing.assert_allclose(result["history"][key], expected["history"][key], rtol=1e-4, atol=1e-6)


_DATA_PARALLEL = textwrap.dedent(
    """
    import json, sys
    from trainer import configs, presets
    from trainer.train import train

    results = {}
    for name, sets in (("single", ["runtime.strategy=none", "data.batch_size=4"]),
                       ("parallel", ["runtime.strategy=mirrored", "data.batch_size=2"])):
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), sys.argv[3:] + sets)
        result = train(config, sys.argv[1], f"{sys.argv[2]}/{name}", verbose=0)
        results[name] = {"history": result.history, "replicas": result.num_replicas,
                         "batch": result.global_batch_size}
    print(json.dumps(results))
    """
)


@pytest.mark.slow
def test_data_parallel_over_two_devices_matches_one_device(tmp_path):
    """`keras.distribution.DataParallel` over 2 CPU devices trains the same global
    batches as one device: the same history within float tolerance."""
    # Three epochs of one step each: a history entry after every update.
    # Over more steps, tiny_cpu's lr 0.05 (x5 on the classifier) amplifies
    # the round-off differences between one device's sums and two devices'
    # chaotically: with 4 steps per epoch, epoch 2's loss agreed to 1e-5 on
    # an AVX-512 CPU but to 3e-3 on an AVX2 one, and lr 0.02 gave 2e-2. Step
    # by step the histories agree to 5e-7 (AVX2; 3e-6 with the default
    # `data.flip=auto`, whose label swaps make the loss less smooth).
    completed = subprocess.run(
        [sys.executable, "-c", _DATA_PARALLEL, "synthetic:motion:16:8:32", str(tmp_path), "train.epochs=3",
         "train.steps_per_epoch=1", *_TINY_SETS[1:3], "data.flip=all"],
        capture_output=True, text=True, timeout=600,
        env=_environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = _last_json(completed.stdout)
    single, parallel = results["single"], results["parallel"]
    assert (single["replicas"], parallel["replicas"]) == (1, 2) and single["batch"] == parallel["batch"] == 4
    for key in ("loss", "val_loss", "top1"):
        assert len(single["history"][key]) == 3
        np.testing.assert_allclose(parallel["history"][key], single["history"][key], rtol=1e-4, atol=1e-5)
