"""`selfy train` end to end: a tiny model learns, kill -9 resume, run dir, eval, data errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from _resume import kill_after_mid_epoch_backup

from trainer import configs, presets
from trainer.synthetic import write_color_dataset

NUM_CLASSES = 4
EPOCHS = 3
# 32 clips / batch 4 = 8 steps per epoch; a backup after every step, so the
# run to interrupt spends most of its time with a mid-epoch backup on disk.
COMMON_SETS = [f"train.epochs={EPOCHS}", "train.backup_every_steps=1"]


def _train_command(data_dir: str, run_dir: str, *sets: str) -> list[str]:
    command = [sys.executable, "-m", "selfy_cli.main", "train", "--preset", "tiny_cpu"]
    command += ["--data", data_dir, "--out", run_dir]
    for item in [*COMMON_SETS, *sets]:
        command += ["--set", item]
    return command


def _environment() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def _result(completed_stdout: str) -> dict:
    return json.loads(completed_stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_color_dataset(str(tmp_path_factory.mktemp("color_data")), num_classes=NUM_CLASSES)


# Runs `selfy train` and kills itself with SIGKILL at a phase of the second
# epoch: "validation" (first validation batch) or "checkpoint" (last.keras
# written to its temporary name, not yet renamed).
_KILL_AT_PHASE = r"""
import importlib, os, signal, sys
import keras

train_module = importlib.import_module("trainer.train")

phase, argv = sys.argv[1], sys.argv[2:]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if phase == "validation":
    class KillInValidation(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_test_batch_end(self, batch, logs=None):
            if self.epoch == 1:
                die()

    original_train = train_module.train
    train_module.train = lambda *args, **kwargs: original_train(
        *args, extra_callbacks=[KillInValidation()], **kwargs
    )
else:
    from selfy_tf.files import atomic_path

    original_save = train_module._save_model
    last_saves = []

    def save_then_die(model, path, *arguments):
        if path.endswith("last.keras"):
            last_saves.append(path)
            if len(last_saves) == 2:
                with atomic_path(path, suffix=".keras") as temporary:
                    model.save(temporary)
                    die()
        original_save(model, path, *arguments)

    train_module._save_model = save_then_die

from selfy_cli.main import main
sys.exit(main(argv))
"""
KILL_PHASES = ("mid_epoch", "validation", "checkpoint")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """An uninterrupted run, and runs killed with SIGKILL in the second epoch
    (mid-epoch, during validation, while writing checkpoints), then resumed.

    The runs start at once (several processes) to save wall time.
    """
    root = tmp_path_factory.mktemp("runs")
    reference_dir = str(root / "reference")
    phase_dirs = {phase: str(root / phase) for phase in KILL_PHASES}
    reference = subprocess.Popen(
        _train_command(data_dir, reference_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=_environment(),
    )
    victim_logs = {phase: open(root / f"{phase}.stderr", "w") for phase in KILL_PHASES}
    victims = {
        phase: subprocess.Popen(
            [sys.executable, "-c", _KILL_AT_PHASE, phase, *_train_command(data_dir, phase_dirs[phase])[3:]]
            if phase != "mid_epoch"
            else _train_command(data_dir, phase_dirs[phase]),
            # A file, not a pipe: nobody reads while the victims run.
            stdout=subprocess.DEVNULL, stderr=victim_logs[phase], env=_environment(),
        )
        for phase in KILL_PHASES
    }
    victim = victims["mid_epoch"]
    # Kill inside the second epoch, after a mid-epoch backup.
    killed_at = kill_after_mid_epoch_backup(victim, phase_dirs["mid_epoch"], timeout_s=300)
    for phase in KILL_PHASES:
        victims[phase].wait(timeout=300)
        victim_logs[phase].close()
    for phase in ("validation", "checkpoint"):
        stderr = (root / f"{phase}.stderr").read_text()
        assert victims[phase].returncode == -signal.SIGKILL, f"{phase}: {stderr[-3000:]}"
    stdout, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    resumes = {
        phase: subprocess.Popen(
            _train_command(data_dir, phase_dirs[phase]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=_environment(),
        )
        for phase in KILL_PHASES
    }
    resumed = {}
    for phase, process in resumes.items():
        resumed_stdout, resumed_stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{phase}: {resumed_stderr[-3000:]}"
        resumed[phase] = _result(resumed_stdout)
    return {
        "reference": _result(stdout),
        "reference_stderr": stderr,
        "resumed": resumed["mid_epoch"],
        "killed_at": killed_at,
        "reference_dir": reference_dir,
        "resumed_dir": phase_dirs["mid_epoch"],
        "phases": {phase: {"result": resumed[phase], "dir": phase_dirs[phase]} for phase in KILL_PHASES},
    }


class TestTraining:
    def test_tiny_model_loss_falls_and_beats_chance(self, runs):
        history = runs["reference"]["history"]
        assert history["epoch"] == [1, 2, 3]
        # An epoch is 8 steps of 4 augmented clips: its mean loss is noisy
        # and need not fall every epoch; validation on clean clips must end
        # well above chance.
        assert min(history["loss"][1:]) < 0.8 * history["loss"][0]
        chance = 1.0 / NUM_CLASSES
        assert history["top1"][-1] > chance + 0.25
        assert history["val_top1"][-1] > chance + 0.25
        assert runs["reference"]["global_step"] == EPOCHS * 8

    def test_run_directory_layout(self, runs):
        run_dir = runs["reference_dir"]
        for name in ("config.yaml", "labels.txt", "history.csv", "train.log"):
            assert os.path.isfile(os.path.join(run_dir, name)), name
        for name in ("best.keras", "last.keras"):
            assert os.path.isfile(os.path.join(run_dir, "checkpoints", name)), name
        assert os.path.isfile(os.path.join(run_dir, "backup", "backup.npz"))
        events = [name for _, _, names in os.walk(os.path.join(run_dir, "logs")) for name in names]
        assert any(name.startswith("events.out.tfevents") for name in events)
        with open(os.path.join(run_dir, "history.csv")) as stream:
            rows = list(csv.DictReader(stream))
        assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
        assert {"loss", "top1", "top5", "val_top1", "lr", "clips_per_sec"} <= set(rows[0])
        saved = configs.load_yaml(os.path.join(run_dir, "config.yaml"))
        # The class count came from the data's labels.txt; the other model
        # fields are resolved from the preset's registry config.
        expected = configs.resolve_model(
            configs.apply_overrides(presets.get_preset("tiny_cpu"), [*COMMON_SETS, "model.num_classes=4"])
        )
        assert saved.model.num_frames == 4
        assert configs.config_to_dict(saved) == configs.config_to_dict(expected)
        with open(os.path.join(run_dir, "labels.txt")) as stream:
            assert stream.read().split() == ["red", "green", "blue", "yellow"]

    def test_each_epoch_is_printed_once(self, runs):
        # Not a terminal: no progress bar, and Keras's own epoch lines are
        # not printed besides the trainer's.
        stderr = runs["reference_stderr"]
        for epoch in range(1, EPOCHS + 1):
            lines = [line for line in stderr.splitlines() if f"Epoch {epoch}/{EPOCHS}" in line]
            assert len(lines) == 1 and lines[0].startswith(f"Epoch {epoch}/{EPOCHS}: loss "), lines
        assert "step/s" not in stderr and "8/8" not in stderr
        assert "Flips (data.flip=auto): 4 other classes flipped with their label." in stderr

    def test_best_checkpoint_names_its_epoch(self, runs):
        # The rule written out independently: the highest val_top1, then the
        # lowest val_loss, then the latest epoch.
        history = runs["reference"]["history"]
        scores = list(zip(history["val_top1"], [-loss for loss in history["val_loss"]], history["epoch"]))
        best_top1, _, best_epoch = max(scores)
        best = runs["reference"]["best_metric"]
        assert best == {"name": "val_top1", "value": best_top1, "epoch": best_epoch}
        if best_epoch == EPOCHS:
            from selfy_tf.run_dir import load_model

            checkpoints = os.path.join(runs["reference_dir"], "checkpoints")
            best_weights = load_model(os.path.join(checkpoints, "best.keras")).model.get_weights()
            last_weights = load_model(os.path.join(checkpoints, "last.keras")).model.get_weights()
            for best_array, last_array in zip(best_weights, last_weights, strict=True):
                np.testing.assert_array_equal(best_array, last_array)

    @pytest.mark.parametrize(
        "scores, best_epoch",
        [
            # (val_top1, val_loss) per epoch
            ([(0.5, 1.0), (0.75, 0.9), (0.5, 0.1)], 2),  # the highest metric
            ([(1.0, 0.4), (1.0, 0.2), (1.0, 0.3)], 2),  # a tie: the lowest loss
            ([(1.0, 0.2), (1.0, 0.2)], 2),  # a tie of both: the later epoch
            ([(None, None), (0.25, 2.0), (None, None)], 2),  # epochs without validation
            ([(None, None), (None, None)], 1),  # never validated: the first epoch
        ],
    )
    def test_best_epoch_rule(self, scores, best_epoch):
        from trainer.train import _update_best

        best = None
        for epoch, (value, loss) in enumerate(scores, start=1):
            best = _update_best(best, {"value": value, "loss": loss, "epoch": epoch})
        assert best["epoch"] == best_epoch

    def test_monitor_last_keeps_the_last_epoch(self):
        from trainer.train import _update_best

        best = None
        for epoch, value in enumerate([0.9, 0.5, None], start=1):
            best = _update_best(best, {"value": value, "loss": 1.0, "epoch": epoch}, keep_last=True)
            assert best["epoch"] == epoch

    def test_tensorboard_has_lr_and_clips_per_sec(self, runs):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        log_dir = os.path.join(runs["reference_dir"], "logs", "train")
        accumulator = EventAccumulator(log_dir, size_guidance={"tensors": 0})
        accumulator.Reload()
        tags = set(accumulator.Tags()["tensors"])
        assert {"epoch/loss", "epoch/top1", "epoch/top5", "epoch/lr", "epoch/clips_per_sec", "step/lr"} <= tags


@pytest.mark.slow
class TestStssXla:
    def test_training_turns_the_stss_xla_switch_on_and_restores_it(self, data_dir, tmp_path):
        import keras

        from selfy_tf.ops import stss_xla_enabled
        from trainer.train import train

        class Record(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seen = []

            # Keras traces the train step on its first call, after this hook.
            def on_train_batch_begin(self, batch, logs=None):
                self.seen.append(stss_xla_enabled())

        config = configs.apply_overrides(
            presets.get_preset("tiny_cpu"),
            ["train.epochs=1", "train.steps_per_epoch=1", "data.validation_split=none"],
        )
        record = Record()
        assert not stss_xla_enabled()
        train(config, data_dir, str(tmp_path / "run"), verbose=0, extra_callbacks=[record])
        assert record.seen == [True]
        assert not stss_xla_enabled()
        saved = configs.load_yaml(str(tmp_path / "run" / "config.yaml"))
        assert saved.runtime.stss_xla is True
        # The saved config holds the resolved model fields of `selfy_tsm_r18.tiny`.
        assert (saved.model.num_frames, saved.model.input_size, saved.model.num_classes) == (4, 32, NUM_CLASSES)


class TestResume:
    def test_resumed_mid_epoch_without_redoing_finished_epochs(self, runs):
        killed_at = runs["killed_at"]
        resumed = runs["resumed"]
        assert resumed["resumed_from"] == {
            "epoch": killed_at["epoch"],
            "step_in_epoch": killed_at["step_in_epoch"],
        }
        assert resumed["epochs_completed"] == EPOCHS
        # The skipped batches are not trained again: same step count.
        assert resumed["global_step"] == runs["reference"]["global_step"]
        with open(os.path.join(runs["resumed_dir"], "history.csv")) as stream:
            assert [int(row["epoch"]) for row in csv.DictReader(stream)] == [1, 2, 3]

    @pytest.mark.parametrize("phase", KILL_PHASES)
    def test_resumed_run_equals_uninterrupted_run(self, runs, phase):
        # Same batches in the same order, restored optimizer and running
        # metrics: the histories agree to float32 round-off, in the result
        # and in history.csv, whatever the phase the run was killed in.
        resumed_dir = runs["phases"][phase]["dir"]
        reference, resumed = runs["reference"]["history"], runs["phases"][phase]["result"]["history"]
        assert resumed["epoch"] == reference["epoch"] == [1, 2, 3]
        for key in ("loss", "top1", "val_loss", "val_top1", "lr"):
            np.testing.assert_allclose(resumed[key], reference[key], rtol=1e-4, atol=1e-5, err_msg=key)
        with open(os.path.join(resumed_dir, "history.csv")) as stream:
            rows = list(csv.DictReader(stream))
        assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
        for key in ("loss", "top1", "val_loss", "val_top1", "lr"):
            np.testing.assert_allclose(
                [float(row[key]) for row in rows], reference[key], rtol=1e-4, atol=1e-5, err_msg=key
            )
        with np.load(os.path.join(runs["reference_dir"], "backup", "backup.npz")) as first, np.load(
            os.path.join(resumed_dir, "backup", "backup.npz")
        ) as second:
            model_keys = [key for key in first.files if key.startswith("model/")]
            assert model_keys
            for key in model_keys:
                np.testing.assert_allclose(second[key], first[key], rtol=1e-4, atol=1e-5, err_msg=key)

    def test_finished_run_is_not_trained_again(self, runs, data_dir):
        from trainer.train import train

        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), COMMON_SETS)
        result = train(config, data_dir, runs["reference_dir"], verbose=0)
        assert result.global_step == runs["reference"]["global_step"]
        assert result.history["loss"] == runs["reference"]["history"]["loss"]

    def test_run_of_an_earlier_version_with_the_bare_model_name_resumes(self, runs, data_dir, tmp_path):
        # Earlier versions saved the preset's bare architecture name
        # (`selfy_tsm_r18`); the preset now names its tag (`selfy_tsm_r18.tiny`).
        import shutil

        from trainer.train import train

        run_dir = str(tmp_path / "run")
        shutil.copytree(runs["reference_dir"], run_dir)
        config_path = os.path.join(run_dir, "config.yaml")
        with open(config_path) as handle:
            text = handle.read()
        assert "name: selfy_tsm_r18.tiny\n" in text
        with open(config_path, "w") as handle:
            handle.write(text.replace("name: selfy_tsm_r18.tiny\n", "name: selfy_tsm_r18\n"))
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), COMMON_SETS)
        result = train(config, data_dir, run_dir, verbose=0)
        assert result.global_step == runs["reference"]["global_step"]

    def test_backup_loads_into_the_same_model_built_later_in_the_process(self, tmp_path):
        """Keras numbers auto-named objects per process (`seed_generator_3`): the
        same architecture built after other models still takes the backup; a
        model of other shapes is still refused."""
        import keras

        from trainer.callbacks import load_backup, save_backup

        def small_model(units: int = 3) -> keras.Model:
            inputs = keras.Input((4,))
            outputs = keras.layers.Dense(units)(keras.layers.Dropout(0.5)(inputs))
            model = keras.Model(inputs, outputs)
            model.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
            model.optimizer.build(model.trainable_variables)
            return model

        first = small_model()
        save_backup(str(tmp_path), first, {"epoch": 1}, include_metrics=False)
        keras.layers.Dropout(0.1)  # takes the next auto-generated seed generator name
        second = small_model()
        first_paths = [variable.path for variable in first.variables]
        assert first_paths != [variable.path for variable in second.variables]
        assert load_backup(str(tmp_path), second) == {"epoch": 1}
        for mine, theirs in zip(second.variables, first.variables):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(mine), keras.ops.convert_to_numpy(theirs))
        with pytest.raises(ValueError, match="has shape"):
            load_backup(str(tmp_path), small_model(units=5))

    def test_resume_with_other_config_is_refused(self, runs, data_dir):
        from trainer.train import train

        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), [*COMMON_SETS, "optimizer.lr=0.5"])
        with pytest.raises(ValueError, match=r"different config \(optimizer.lr: 0.05 -> 0.5\)"):
            train(config, data_dir, runs["reference_dir"], verbose=0)


class TestEvaluate:
    def test_eval_writes_report_and_confusion_matrix(self, runs, data_dir, tmp_path):
        from trainer import evaluate

        report = evaluate(runs["reference_dir"], data_dir, num_clips=2, num_crops=3, output_dir=str(tmp_path))
        assert report["num_examples"] == 16
        assert (report["num_clips"], report["num_crops"]) == (2, 3)
        confusion = np.asarray(report["confusion_matrix"])
        assert confusion.shape == (NUM_CLASSES, NUM_CLASSES) and confusion.sum() == 16
        assert report["top1"] == pytest.approx(np.trace(confusion) / 16)
        per_class = [report["per_class"][name]["accuracy"] for name in ("red", "green", "blue", "yellow")]
        np.testing.assert_allclose(per_class, np.diag(confusion) / confusion.sum(axis=1))
        assert report["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
        assert report["top5"] == 1.0  # top-k is capped at the 4 classes
        with open(tmp_path / "eval.json") as stream:
            saved = json.load(stream)
        for key in ("top1", "top5", "mean_class_accuracy", "num_examples", "num_clips", "num_crops", "per_class"):
            assert key in saved
        with open(tmp_path / "confusion_matrix.json") as stream:
            assert json.load(stream)["matrix"] == report["confusion_matrix"]
        with open(tmp_path / "confusion_matrix.png", "rb") as stream:
            assert stream.read(8) == b"\x89PNG\r\n\x1a\n"

    def test_eval_cli_writes_into_run_dir(self, runs, data_dir, capsys):
        from selfy_cli.main import main

        assert main(["eval", runs["reference_dir"], "--data", data_dir]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["num_examples"] == 16
        assert os.path.isfile(os.path.join(runs["reference_dir"], "eval.json"))

    def test_classification_report_against_hand_computed_values(self):
        from trainer.evaluate import classification_report

        scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7]])
        labels = np.array([0, 2, 1, 2])
        report = classification_report(scores, labels, ["a", "b", "c"], top_k=2)
        assert report["top1"] == 0.5
        assert report["top5"] == 0.75  # top-2: rows 0, 1, 3 hit
        # per class: a 1/1, b 0/1, c 1/2
        assert report["mean_class_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
        assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]


def _write_shard(path: str, labels: list[int]) -> None:
    """A shard written by hand (not by the converter), with the given labels."""
    import tensorflow as tf

    from tfrecords import encode_clip

    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as writer:
        for label in labels:
            writer.write(encode_clip(rng.integers(0, 255, (6, 40, 48, 3), dtype=np.uint8), label))


class TestDataErrors:
    def test_eval_cli_stops_at_a_label_outside_the_classes(self, runs, tmp_path, capsys):
        from selfy_cli.main import main

        (tmp_path / "labels.txt").write_text("red\ngreen\nblue\nyellow\n")
        shard = str(tmp_path / "validation-00000-of-00001.tfrecord")
        _write_shard(shard, [0, 1, 2, 3, 1, 999, 0])
        assert main(["eval", runs["reference_dir"], "--data", str(tmp_path), "--out", str(tmp_path)]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"selfy eval: error: shard {shard} record 5: label 999 is outside [0, 4)")

    def test_train_cli_stops_at_a_label_outside_the_classes(self, tmp_path, capsys):
        from selfy_cli.main import main

        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "labels.txt").write_text("red\ngreen\nblue\nyellow\n")
        shard = str(data_dir / "train-00000-of-00001.tfrecord")
        _write_shard(shard, [0, 1, -1, 3])
        command = ["train", "--preset", "tiny_cpu", "--data", str(data_dir), "--out", str(tmp_path / "run")]
        assert main([*command, "--set", "train.epochs=1"]) == 1
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith(f"selfy train: error: shard {shard} record 2: label -1 is outside [0, 4)")

    def test_class_count_mismatch(self, data_dir):
        from trainer.train import inspect_data_dir

        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.num_classes=5"])
        with pytest.raises(ValueError, match="lists 4 classes but `model.num_classes`=5"):
            inspect_data_dir(data_dir, config)

    def test_frame_count_mismatch(self, data_dir):
        from trainer.train import inspect_data_dir

        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.num_frames=8"])
        with pytest.raises(ValueError, match="at most 6 frames but `model.num_frames`=8"):
            inspect_data_dir(data_dir, config)

    def test_missing_and_empty_data_dirs(self, tmp_path):
        from trainer.train import inspect_data_dir

        config = presets.get_preset("tiny_cpu")
        with pytest.raises(FileNotFoundError, match="Data directory not found"):
            inspect_data_dir(str(tmp_path / "nowhere"), config)
        with pytest.raises(FileNotFoundError, match="labels.txt"):
            inspect_data_dir(str(tmp_path), config)
        (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
        with pytest.raises(ValueError, match="No training clips"):
            inspect_data_dir(str(tmp_path), config)


class TestCommandLine:
    """What `selfy train` works out by itself, and how it reports."""

    def test_num_classes_from_labels_and_presets_that_disagree(self, data_dir):
        from trainer.train import inspect_data_dir, with_data_classes

        config = presets.get_preset("tiny_cpu")
        assert config.model.num_classes is None
        resolved = with_data_classes(config, inspect_data_dir(data_dir, config))
        assert resolved.model.num_classes == NUM_CLASSES and config.model.num_classes is None
        paper = presets.get_preset("ssv1_selfy_r50_8f")
        assert configs.resolve_model(paper).model.num_classes == 174
        with pytest.raises(ValueError, match="lists 4 classes but `model.num_classes`=174"):
            inspect_data_dir(data_dir, paper)

    def test_shortcuts_apply_before_set(self, tmp_path):
        from selfy_cli.main import build_parser
        from selfy_cli.train import _resolve_config

        base = ["train", "--preset", "tiny_cpu", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
        args = build_parser().parse_args([*base, "--epochs", "7", "--batch-size", "3", "--lr", "0.05"])
        config = _resolve_config(args)
        assert (config.train.epochs, config.data.batch_size, config.optimizer.lr) == (7, 3, 0.05)
        args = build_parser().parse_args([*base, "--epochs", "7", "--set", "train.epochs=9"])
        assert _resolve_config(args).train.epochs == 9

    def test_refused_run_leaves_no_run_directory(self, data_dir, tmp_path, capsys):
        from selfy_cli.main import main

        run_dir = tmp_path / "run"
        command = ["train", "--preset", "ssv1_selfy_r50_8f", "--data", data_dir, "--out", str(run_dir)]
        assert main(command) == 1
        assert "lists 4 classes but `model.num_classes`=174" in capsys.readouterr().err
        assert not run_dir.exists()
        command = ["train", "--preset", "tiny_cpu", "--data", data_dir, "--out", str(run_dir), "--batch-size", "64"]
        assert main(command) == 1
        assert "fewer than one global batch" in capsys.readouterr().err
        assert not run_dir.exists()

    def test_terminal_shows_a_progress_bar_and_each_epoch_once(self, data_dir, tmp_path):
        # stderr on a pseudo-terminal, as in an interactive shell; `selfy`
        # puts its TensorFlow-notice filter (a pipe) in front of it.
        import pty
        import select

        primary, secondary = pty.openpty()
        command = _train_command(data_dir, str(tmp_path / "run"), "train.epochs=1", "train.steps_per_epoch=3")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=secondary, env=_environment())
        os.close(secondary)
        output = b""
        try:
            while select.select([primary], [], [], 300)[0]:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the terminal closed: every writer is gone
                    break
                if not chunk:
                    break
                output += chunk
        finally:
            os.close(primary)
            stdout, _ = process.communicate(timeout=60)
        text = output.decode("utf-8", "replace")
        assert process.returncode == 0, text[-3000:]
        assert _result(stdout.decode())["epochs_completed"] == 1
        # tqdm's bar over the 3 training steps, then over the 4 validation
        # steps (redrawn at most 10 times a second), erased once the epoch
        # is logged.
        assert "\rEpoch 1/1:   0%|" in text and " 0/3 [" in text
        assert "\rEpoch 1/1 validation:   0%|" in text and " 0/4 [" in text
        assert text.count("Epoch 1/1: loss ") == 1

    def test_no_validation_split_warns_and_terminal_gets_a_summary(self, tmp_path, capsys, monkeypatch):
        from selfy_cli.main import main

        data = write_color_dataset(str(tmp_path / "data"), num_classes=3, num_train=8, num_validation=0, num_shards=1)
        run_dir = tmp_path / "run"
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        command = ["train", "--preset", "tiny_cpu", "--data", data, "--out", str(run_dir), "--epochs", "1"]
        assert main(command) == 0
        captured = capsys.readouterr()
        assert "WARNING: no validation split in" in captured.err
        assert captured.out.startswith(f"Trained 1 epoch (2 steps) into {run_dir}")
        assert "  warning: no validation split in" in captured.out
        assert "  best top1 " in captured.out and f" (epoch 1): {run_dir}" in captured.out
        with pytest.raises(json.JSONDecodeError):
            json.loads(captured.out.strip().splitlines()[-1])
        with open(run_dir / "result.json") as stream:
            result = json.load(stream)
        assert result["epochs_completed"] == 1 and "no validation split" in result["warnings"][0]
        assert "no validation split" in (run_dir / "train.log").read_text()
        assert configs.load_yaml(str(run_dir / "config.yaml")).model.num_classes == 3
        # --json: the result on stdout even on a terminal (the finished run returns at once).
        assert main([*command, "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_dir"] == str(run_dir)
