"""The `selfy` command line: one meaning per flag, and one line (not a traceback) per mistake.

Each common mistake goes through `selfy_cli.main.main(argv)` in-process:
the exit status is 1 for a failure, 2 for bad usage (argparse), and stderr
holds one line naming the problem and the fix; `--debug` re-raises instead.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re

import numpy as np
import pytest
from PIL import Image
from test_serving_server import _free_port, _write_video, our_server  # noqa: F401 (fixture)

from selfy_cli.main import build_parser, main


def _one_error_line(capsys, command: str) -> str:
    """The one error line on stderr (log lines such as "Loaded ..." may precede it)."""
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    assert errors[0].startswith(f"selfy {command}: error: "), stderr
    return errors[0]


@pytest.fixture(scope="module")
def keras_run(tmp_path_factory, tiny_model_factory, exported_model):
    """A run directory with a tiny model (the served model's labels) and a small dataset."""
    from conftest import SERVING_LABELS

    from selfy_tf import run_dir
    from selfy_tf.eval_view import EvalView
    from tfrecords import write_split

    root = tmp_path_factory.mktemp("cli_run")
    paths = run_dir.RunPaths(str(root / "run"))
    paths.make_dirs()
    model = tiny_model_factory(num_classes=len(SERVING_LABELS))
    run_dir.save_model(model, paths.best_checkpoint, EvalView(num_frames=4, crop_size=32, scale_size=36))
    run_dir.write_labels(paths.labels, SERVING_LABELS)
    rng = np.random.default_rng(0)
    clips = [(rng.integers(0, 256, (6, 40, 48, 3), np.uint8), index % 5, f"clip{index}") for index in range(4)]
    data = str(root / "data")
    write_split(data, "validation", clips, list(SERVING_LABELS))
    return paths, data


class TestHelp:
    def _subparsers(self) -> dict[str, argparse.ArgumentParser]:
        parser = build_parser()
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        found = dict(action.choices)
        tfrecords = found["tfrecords"]
        inner = next(a for a in tfrecords._actions if isinstance(a, argparse._SubParsersAction))
        found.update({f"tfrecords {name}": sub for name, sub in inner.choices.items()})
        return found

    def test_no_default_none_and_no_doubled_default(self):
        for name, parser in self._subparsers().items():
            text = parser.format_help()
            flat = " ".join(text.split())
            assert "(default: None)" not in flat, name
            assert "(default: False)" not in flat, name
            for option in re.split(r"\n  (?=-)", text):
                assert len(re.findall(r"\bdefault\b", option, flags=re.IGNORECASE)) <= 1, (name, option)

    def test_real_defaults_are_shown_once(self):
        text = " ".join(self._subparsers()["serve"].format_help().split())
        assert "(default: 8501)" in text and "(default: selfy)" in text

    def test_model_means_the_same_everywhere(self):
        parser = build_parser()
        subject = {
            "eval": ["M", "--data", "D"], "export": ["M", "--out", "B"], "tflite": ["M", "--out", "f.tflite"],
        }
        for command, argv in subject.items():
            assert parser.parse_args([command] + argv).model == "M"
        for command in ("predict", "viz"):
            args = parser.parse_args([command, "clip.mp4", "--model", "M"])
            assert (args.model, args.video) == ("M", "clip.mp4")
        # An architecture name is --arch (its earlier name --model still parses).
        for flag in ("--arch", "--model"):
            args = parser.parse_args(["convert-weights", "c.pth.tar", "w.weights.h5", flag, "tsm_r18", "--num-classes", "2"])
            assert args.arch == "tsm_r18"

    def test_view_flags_of_eval_and_export(self, capsys):
        parser = build_parser()
        for command, argv in (("eval", ["M", "--data", "D"]), ("export", ["M", "--out", "B"])):
            args = parser.parse_args([command] + argv + ["--eval-size", "240x320"])
            assert (args.eval_size, args.scale_size) == ((240, 320), None)
            assert parser.parse_args([command] + argv + ["--scale-size", "256"]).scale_size == 256
        assert "deprecated" not in capsys.readouterr().err
        # The earlier name of export's flag still works, with a one-line notice naming the new one.
        assert parser.parse_args(["export", "M", "--out", "B", "--resize-short", "40"]).scale_size == 40
        notice = capsys.readouterr().err.splitlines()
        assert notice == [
            "selfy export: warning: --resize-short is deprecated and will be removed in 0.2.0; use --scale-size."
        ]

    @pytest.mark.parametrize(
        "extra", [["--eval-size", "240"], ["--scale-size", "0"], ["--eval-size", "240x320", "--scale-size", "256"]]
    )
    def test_bad_view_flags_are_usage_errors(self, extra, capsys):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "M", "--data", "D"] + extra)
        assert exit_info.value.code == 2
        assert "usage: selfy eval" in capsys.readouterr().err


class TestModelKinds:
    @pytest.mark.parametrize(
        "command, argv, reason",
        [
            ("export", ["--out", "B"], "selfy export builds the SavedModel from the Keras model"),
            ("tflite", ["--out", "m.tflite"], "selfy tflite converts the Keras layers"),
        ],
    )
    def test_saved_model_where_keras_is_needed_is_one_line(self, command, argv, reason, exported_model, capsys):
        saved_model = os.path.join(exported_model.base, "selfy")
        assert main([command, saved_model] + argv) == 1
        error = _one_error_line(capsys, command)
        assert "is an exported SavedModel" in error and reason in error
        assert "Pass the training run directory or the .keras file" in error

    def test_eval_of_an_export_without_its_recorded_view_is_one_line(self, exported_model, keras_run, tmp_path, capsys):
        import shutil

        from selfy_tf.run_dir import SAVED_MODEL_INFO

        _, data = keras_run
        saved_model = tmp_path / "selfy"
        shutil.copytree(os.path.join(exported_model.base, "selfy"), saved_model)
        os.remove(saved_model / "1" / SAVED_MODEL_INFO)
        assert main(["eval", str(saved_model), "--data", data]) == 1
        error = _one_error_line(capsys, "eval")
        assert f"holds no {SAVED_MODEL_INFO}" in error and "Export the model again with `selfy export`" in error

    def test_viz_refuses_a_saved_model_version_folder(self, exported_model, tmp_path, capsys):
        version = os.path.join(exported_model.base, "selfy", "1")
        assert main(["viz", "clip.mp4", "--model", version, "--out", str(tmp_path)]) == 1
        assert "selfy viz reads the Keras layers" in _one_error_line(capsys, "viz")

    def test_predict_takes_a_frame_folder_and_every_kind_of_model(self, exported_model, keras_run, tmp_path, capsys):
        from serving.client import LocalClient

        frames = np.random.default_rng(3).integers(0, 256, (7, 40, 48, 3), np.uint8)
        folder = tmp_path / "frames"
        folder.mkdir()
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{index:03d}.png")
        assert main(["predict", str(folder), "--model", os.path.join(exported_model.base, "selfy"), "--json"]) == 0
        served = json.loads(capsys.readouterr().out)["top_k"]
        assert len(served) == 3 and served[0]["label"] in exported_model.labels
        from selfy_tf.run_dir import load_model

        opened = load_model(os.path.join(exported_model.base, "selfy"), allow_saved_model=True)
        assert opened.is_saved_model and opened.labels == exported_model.labels
        assert opened.model_path == exported_model.result.path
        # A run directory runs its Keras model here; the SavedModel's
        # predict_frames signature (the TensorFlow view) is the reference.
        paths, _ = keras_run
        assert main(["predict", str(folder), "--model", paths.root, "--json"]) == 0
        local = json.loads(capsys.readouterr().out)["top_k"]
        from serving.export import export_saved_model

        loaded = load_model(paths.root)
        base = str(tmp_path / "exported")
        export_saved_model(
            loaded.model, base, name="run", labels=loaded.labels, top_k=5, view_settings={"scale_size": 36}
        )
        reference = LocalClient(os.path.join(base, "run")).predict({"frames": frames[None]}, "predict_frames")
        probabilities = reference["probabilities"][0]
        assert [entry["index"] for entry in local] == list(np.argsort(-probabilities, kind="stable")[:5])
        np.testing.assert_allclose(
            [entry["score"] for entry in local], np.sort(probabilities)[::-1][:5], atol=1e-4
        )


class TestServerMistakes:
    def test_wrong_port_wrong_name_and_grpc_unavailable(self, our_server, tmp_path, capsys):
        video = str(tmp_path / "clip.mp4")
        _write_video(video)
        closed_port = _free_port()
        cases = [
            (f"http://127.0.0.1:{closed_port}", "selfy", "no server answers at", "selfy serve"),
            (f"grpc://127.0.0.1:{closed_port}", "selfy", "no gRPC server answers at", "selfy serve"),
            (our_server.rest_url, "nope", "has no model named 'nope'", "Check --name"),
            (f"grpc://{our_server.grpc_target}", "nope", "has no model named 'nope'", "Check --name"),
        ]
        for server, name, problem, fix in cases:
            assert main(["predict", video, "--server", server, "--name", name]) == 1
            error = _one_error_line(capsys, "predict")
            assert problem in error and fix in error, error
        with pytest.raises(ConnectionRefusedError):
            main(["--debug", "predict", video, "--server", f"http://127.0.0.1:{closed_port}"])


class TestDiskAndLabels:
    def test_full_disk_while_writing_is_one_line(self, keras_run, tmp_path, monkeypatch, capsys):
        import selfy_tf.files

        def full_disk(path, data):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(selfy_tf.files, "atomic_write_bytes", full_disk)
        paths, _ = keras_run
        argv = ["export", paths.root, "--out", str(tmp_path / "exported")]
        assert main(argv) == 1
        error = _one_error_line(capsys, "export")
        assert "no space left on the device" in error and "Free disk space" in error
        assert "labels.txt" in error
        with pytest.raises(OSError) as raised:
            main(["--debug"] + argv)
        assert raised.value.errno == errno.ENOSPC

    def test_full_disk_in_a_tensorflow_writer_is_one_line(self, keras_run, tmp_path, monkeypatch, capsys):
        import tensorflow as tf

        import serving.export

        def full_disk(*args, **kwargs):
            raise tf.errors.ResourceExhaustedError(None, None, "/data/exported/variables.data; No space left on device")

        monkeypatch.setattr(serving.export, "export_saved_model", full_disk)
        paths, _ = keras_run
        assert main(["export", paths.root, "--out", str(tmp_path / "exported")]) == 1
        assert _one_error_line(capsys, "export").endswith(
            "no space left on the device (/data/exported/variables.data; No space left on device). "
            "Free disk space or write to another disk."
        )

    @pytest.mark.parametrize(
        "bug", [KeyError("a bug, not a user's mistake"), TypeError("f() got an unexpected keyword argument 'x'")]
    )
    def test_bugs_keep_their_traceback(self, bug, keras_run, tmp_path, monkeypatch, capsys):
        import serving.export

        def raise_bug(*args, **kwargs):
            raise bug

        monkeypatch.setattr(serving.export, "export_saved_model", raise_bug)
        paths, _ = keras_run
        with pytest.raises(type(bug)):
            main(["export", paths.root, "--out", str(tmp_path / "exported")])
        assert "error:" not in capsys.readouterr().err

    def test_full_disk_while_serving_is_one_line(self, exported_model, monkeypatch, capsys):
        from serving.server.model_server import ModelServer

        def full_disk(self):
            raise OSError(errno.ENOSPC, "No space left on device", "/var/log/serve.log")

        monkeypatch.setattr(ModelServer, "start", full_disk)
        assert main(["serve", exported_model.base, "--grpc-port", "0", "--rest-port", "0"]) == 1
        assert _one_error_line(capsys, "serve") == (
            "selfy serve: error: no space left on the device (/var/log/serve.log). "
            "Free disk space or write to another disk."
        )

    def test_missing_labels_is_one_line(self, keras_run, tmp_path, capsys):
        import shutil

        paths, _ = keras_run
        model_file = tmp_path / "alone" / "model.keras"
        model_file.parent.mkdir()
        shutil.copy(paths.best_checkpoint, model_file)
        assert main(["export", str(model_file), "--out", str(tmp_path / "exported")]) == 1
        error = _one_error_line(capsys, "export")
        assert "No labels.txt for" in error and "Pass one with --labels FILE" in error
        assert not (tmp_path / "exported").exists()


class TestEvalView:
    def test_eval_size_and_scale_size_override_the_stored_view(self, keras_run, tmp_path, capsys):
        from selfy_tf.run_dir import load_model
        from trainer.evaluate import evaluate

        paths, data = keras_run
        assert main(["eval", paths.root, "--data", data, "--out", str(tmp_path)]) == 0
        assert json.loads(capsys.readouterr().out)["eval_view"] == {"scale_size": 36}
        for flags, view, keywords in (
            (["--scale-size", "44"], {"scale_size": 44}, {"view_settings": {"scale_size": 44}}),
            (["--eval-size", "36x40"], {"eval_size": [36, 40]}, {"view_settings": {"eval_size": (36, 40)}}),
        ):
            assert main(["eval", paths.root, "--data", data, "--out", str(tmp_path)] + flags) == 0
            summary = json.loads(capsys.readouterr().out)
            assert summary["eval_view"] == view
            reference = evaluate(load_model(paths.root).model, data, output_dir=None, **keywords)
            assert summary["top1"] == reference["top1"] and summary["num_examples"] == 4
