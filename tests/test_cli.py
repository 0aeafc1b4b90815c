"""The `selfy` entry point: version, help, bad usage."""

import subprocess

import pytest

from selfy_cli.main import main
from selfy_tf.version import __version__


def test_version_prints_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_succeeds(capsys):
    assert main([]) == 0
    assert "usage: selfy" in capsys.readouterr().err


def test_unknown_command_is_bad_usage():
    with pytest.raises(SystemExit) as exit_info:
        main(["no-such-command"])
    assert exit_info.value.code == 2


# TensorFlow's start-up lines on a CPU machine (`selfy` keeps them off stderr).
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "failed call to cuInit",
)


def _selfy(*argv: str, python_options: tuple[str, ...] = ()) -> "subprocess.CompletedProcess":
    """Runs the `selfy` command of this checkout in a subprocess (`python_options` go to Python)."""
    import os
    import sys

    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = {**os.environ, "PYTHONPATH": repository, "CUDA_VISIBLE_DEVICES": ""}
    environment.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, *python_options, "-m", "selfy_cli.main", *argv],
        capture_output=True, text=True, env=environment, timeout=120,
    )


def _imported_packages(stderr: str) -> set[str]:
    """Top-level packages named by `python -X importtime` lines on stderr."""
    packages = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                packages.add(name.split(".")[0])
    return packages


class TestStartWithoutTensorFlow:
    # Help and usage errors are answered before any model code is needed.
    @pytest.mark.parametrize(
        "argv, status, expected",
        [
            (["--help"], 0, "usage: selfy"),
            (["train", "--help"], 0, "usage: selfy train"),
            (["eval", "--help"], 0, "usage: selfy eval"),
            (["train", "--bogus"], 2, "usage: selfy train"),
            (["train", "--data", "d", "--out", "r", "--bogus"], 2, "unrecognized arguments: --bogus"),
            (["eval", "run", "--data", "d", "--bogus"], 2, "unrecognized arguments: --bogus"),
            (["tflite", "run", "--out", "m.tflite", "--bogus"], 2, "unrecognized arguments: --bogus"),
            (["convert-weights", "--bogus"], 2, "usage: selfy convert-weights"),
            (["tfrecords", "build", "--bogus"], 2, "usage: selfy tfrecords build"),
        ],
    )
    def test_help_and_usage_errors_import_no_tensorflow_or_keras(self, argv, status, expected):
        result = _selfy(*argv, python_options=("-X", "importtime"))
        assert result.returncode == status, result.stderr[-2000:]
        assert expected in result.stdout + result.stderr
        packages = _imported_packages(result.stderr)
        assert "selfy_tf" in packages and "argparse" in packages
        assert not packages & {"tensorflow", "keras", "jax", "torch"}, sorted(packages)

    def test_lazy_trainer_package_still_exports_its_functions(self):
        # `trainer.evaluate` and `trainer.train` are functions in modules of
        # the same name; importing those modules must not replace them.
        import importlib
        import types

        import trainer

        for name in ("evaluate", "train"):
            module = importlib.import_module(f"trainer.{name}")
            assert isinstance(getattr(trainer, name), types.FunctionType)
            assert getattr(trainer, name) is getattr(module, name)
        assert isinstance(importlib.import_module("trainer.configs"), types.ModuleType)


@pytest.mark.slow
class TestQuietStart:
    @pytest.fixture(scope="class")
    def data_dir(self, tmp_path_factory):
        from trainer.synthetic import write_color_dataset

        return write_color_dataset(str(tmp_path_factory.mktemp("quiet")), num_classes=2, num_train=2, num_validation=0)

    def test_tensorflow_startup_lines_are_filtered(self, data_dir):
        quiet = _selfy("tfrecords", "inspect", data_dir)
        assert quiet.returncode == 0, quiet.stderr
        assert "2 classes" in quiet.stdout
        for noise in _STARTUP_NOISE:
            assert noise not in quiet.stderr, quiet.stderr
        # --verbose shows them again (where this TensorFlow prints any).
        verbose = _selfy("--verbose", "tfrecords", "inspect", data_dir)
        assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
        assert len(verbose.stderr) >= len(quiet.stderr)


def test_stderr_filter_drops_only_the_startup_lines():
    import subprocess
    import sys

    # Lines as TensorFlow writes them (straight to descriptor 2), a progress
    # bar fragment without newline, and ordinary output.
    script = r"""
import os, sys
from selfy_cli._quiet import StderrFilter
stderr_filter = StderrFilter()
stderr_filter.start()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796410665.873137    5634 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.\n")
os.write(2, b"E0000 00:00:1796410667.184967    5634 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n")
os.write(2, b"I0000 00:00:1796410665.873137    5634 port.cc:153] oneDNN custom ")
os.write(2, b"operations are on. You may see slightly different numerical results.\n")
os.write(2, b"E0000 00:00:1796609796.826571   13942 util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512. Falling back to the default Eigen-based implementation if present.\n")
os.write(2, b"INFO: Created TensorFlow Lite ")
os.write(2, b"XNNPACK delegate for CPU.\n")
os.write(2, b"INFO: a LiteRT line that stays\n")
os.write(2, b"W0000 00:00:1796410667.184967    5634 other.cc:1] a warning that stays\n")
os.write(2, b"\r 3/8 [====>")
sys.stderr.write("\rdone\nselfy: error: kept\n")
"""
    import os

    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env={**os.environ, "PYTHONPATH": repository},
        timeout=60,
    )
    assert result.returncode == 0
    assert result.stderr == (
        b"INFO: a LiteRT line that stays\n"
        b"W0000 00:00:1796410667.184967    5634 other.cc:1] a warning that stays\n"
        b"\r 3/8 [====>\rdone\nselfy: error: kept\n"
    )


def test_stderr_filter_survives_native_writes_that_hold_the_gil():
    # Native code (the TFLite converter) may write far more than a pipe's
    # buffer to descriptor 2 without releasing the GIL; ctypes.PyDLL calls
    # `write` that way. A filter that needs the GIL to drain the pipe hangs.
    import subprocess
    import sys

    script = r"""
import ctypes, os, sys
from selfy_cli._quiet import StderrFilter
StderrFilter().start()
libc = ctypes.PyDLL(None)
line = b"loc(callsite(fused[StridedSlice]) error: op not supported\n"
payload = line * (1_000_000 // len(line))
written = 0
while written < len(payload):
    written += libc.write(2, payload[written:], len(payload) - written)
print("finished", flush=True)
"""
    import os

    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, env={**os.environ, "PYTHONPATH": repository},
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == b"finished\n"
    line = b"loc(callsite(fused[StridedSlice]) error: op not supported\n"
    assert result.stderr == line * (1_000_000 // len(line))


def test_retracing_warning_is_dropped(caplog):
    import logging

    from selfy_cli._quiet import drop_retracing_warnings

    drop_retracing_warnings()
    logger = logging.getLogger("tensorflow")
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        logger.warning("5 out of the last 5 calls to <function f> triggered tf.function retracing.")
        logger.warning("another TensorFlow warning")
    assert [record.getMessage() for record in caplog.records] == ["another TensorFlow warning"]


def test_tensorflow_info_logs_only_with_verbose(capsys):
    import logging

    from selfy_cli.main import setup_logging

    tensorflow_logger = logging.getLogger("tensorflow")
    level = tensorflow_logger.level
    try:
        for verbose, shown in ((False, False), (True, True)):
            setup_logging(verbose=verbose)
            tensorflow_logger.info("Assets written to: exported/selfy/.tmp-1-pid1-x/saved_model/assets")
            tensorflow_logger.warning("a TensorFlow warning")
            stderr = capsys.readouterr().err
            assert ("Assets written to" in stderr) is shown, stderr
            assert stderr.count("a TensorFlow warning") == 1
    finally:
        tensorflow_logger.setLevel(level)


@pytest.mark.slow
class TestQuietCommands:
    """Commands that write SavedModels or run LiteRT print their own lines only."""

    _NOISE = ("Assets written to", "INFO:tensorflow", "XNNPACK", "oneDNN", "cuInit", "absl::InitializeLog")

    @pytest.fixture(scope="class")
    def model_file(self, tmp_path_factory, tiny_model_factory):
        from selfy_tf import run_dir
        from selfy_tf.eval_view import EvalView

        root = tmp_path_factory.mktemp("quiet_commands")
        path = str(root / "model.keras")
        run_dir.save_model(tiny_model_factory(num_classes=3), path, EvalView(num_frames=4, crop_size=32))
        run_dir.write_labels(str(root / "labels.txt"), ["a", "b", "c"])
        return path

    def _assert_quiet(self, result, expected: str) -> None:
        assert result.returncode == 0, result.stderr
        assert expected in result.stderr, result.stderr
        for noise in self._NOISE:
            assert noise not in result.stderr, result.stderr

    def test_export_tflite_and_viz(self, model_file, tmp_path):
        import numpy as np

        self._assert_quiet(_selfy("export", model_file, "--out", str(tmp_path / "exported")), "exported version 1")
        tflite = str(tmp_path / "model.tflite")
        self._assert_quiet(_selfy("tflite", model_file, "--out", tflite, "--check-clips", "1"), "TFLite vs Keras")
        clip = str(tmp_path / "clip.npy")
        np.save(clip, np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3), dtype=np.uint8))
        self._assert_quiet(_selfy("viz", clip, "--model", model_file, "--out", str(tmp_path / "viz")), "Wrote")
