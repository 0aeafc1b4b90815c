"""`selfy_tf.run_dir` (run directory, labels.txt, model loading) and `tfrecords.open_split`."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from selfy_tf import run_dir
from selfy_tf.eval_view import EvalView


class TestLabels:
    def test_bom_is_dropped_and_names_stripped(self, tmp_path):
        path = tmp_path / "labels.txt"
        path.write_bytes("\ufeffopen\r\n close \nthrow\n\n".encode("utf-8"))
        assert run_dir.read_labels(str(path)) == ["open", "close", "throw"]

    def test_write_then_read(self, tmp_path):
        path = str(tmp_path / "labels.txt")
        run_dir.write_labels(path, ["a", "b c"])
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == "a\nb c\n"
        assert run_dir.read_labels(path) == ["a", "b c"]

    @pytest.mark.parametrize(
        "text, message",
        [
            ("a\n\nc\n", r"class 1 \(line 2\): class names must be non-empty single lines"),
            ("a\nb\na\n", r"class 2 \(line 3\): class 'a' repeats line 1"),
            ("a\n" + "x" * 513 + "\n", r"class 1 \(line 2\): a class name of 513 characters .* at most 512"),
            ("\n\n", "no class names"),
        ],
    )
    def test_bad_files_name_the_line(self, tmp_path, text, message):
        path = tmp_path / "labels.txt"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=message):
            run_dir.read_labels(str(path))

    def test_512_characters_are_allowed(self, tmp_path):
        path = tmp_path / "labels.txt"
        path.write_text("a\n" + "x" * 512 + "\n", encoding="utf-8")
        assert len(run_dir.read_labels(str(path))[1]) == 512

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="labels file not found"):
            run_dir.read_labels(str(tmp_path / "labels.txt"))
        with pytest.raises(FileNotFoundError, match="no labels.txt in .*: is it a dataset"):
            run_dir.read_labels(str(tmp_path))

    def test_a_folder_reads_as_its_labels_file(self, tmp_path):
        run_dir.write_labels(str(tmp_path / "data" / "labels.txt"), [" a ", "b"])
        assert run_dir.read_labels(str(tmp_path / "data")) == ["a", "b"]

    def test_keep_existing_checks_the_class_list(self, tmp_path):
        path = str(tmp_path / "labels.txt")
        run_dir.write_labels(path, ["a", "b"], keep_existing=True)
        run_dir.write_labels(path, ["a", "b"], keep_existing=True)
        with pytest.raises(ValueError, match=r"labels.txt has 2 classes that differ from the 2 .* line 2"):
            run_dir.write_labels(path, ["a", "c"], keep_existing=True)
        assert run_dir.read_labels(path) == ["a", "b"]
        run_dir.write_labels(path, ["a", "c"])
        assert run_dir.read_labels(path) == ["a", "c"]


@pytest.fixture
def run(tmp_path, tiny_model_factory):
    """A run directory: a checkpoint saved with its view, labels, a config.yaml."""
    model = tiny_model_factory(num_classes=3)
    paths = run_dir.RunPaths(str(tmp_path / "run"))
    paths.make_dirs()
    run_dir.save_model(model, paths.best_checkpoint, EvalView(4, 32, scale_size=40))
    run_dir.write_labels(paths.labels, ["a", "b", "c"])
    return paths, model


class TestLoadModel:
    def test_run_directory_gives_model_labels_and_view(self, run):
        paths, model = run
        loaded = run_dir.load_model(paths.root)
        assert loaded.model_path == paths.best_checkpoint and loaded.run_dir == paths.root
        assert loaded.labels == ["a", "b", "c"]
        assert loaded.eval_view(num_clips=2, num_crops=3) == EvalView(4, 32, scale_size=40, num_clips=2, num_crops=3)
        clip = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3)).astype(np.float32)
        np.testing.assert_allclose(loaded.model(clip).numpy(), model(clip).numpy(), atol=1e-5)

    def test_a_copied_keras_file_keeps_its_view(self, run, tmp_path):
        paths, _ = run
        copy = tmp_path / "elsewhere" / "model.keras"
        copy.parent.mkdir()
        shutil.copy(paths.best_checkpoint, copy)
        loaded = run_dir.load_model(str(copy))
        assert loaded.view_settings == {"scale_size": 40}
        assert loaded.labels is None and loaded.run_dir is None

    def test_checkpoint_without_a_view_falls_back_to_the_run_config(self, run):
        paths, model = run
        model.save(paths.last_checkpoint)  # a plain Keras save: no stored view
        with open(paths.config, "w", encoding="utf-8") as handle:
            handle.write("data:\n  eval_size: [48, 64]\n")
        loaded = run_dir.load_model(paths.last_checkpoint)
        assert loaded.view_settings == {"eval_size": [48, 64]}
        assert loaded.labels == ["a", "b", "c"]

    @pytest.mark.parametrize(
        "config, expected",
        [
            (None, run_dir.DEFAULT_STSS_XLA),
            ("runtime:\n  stss_xla: false\n", False),
            ("runtime:\n  stss_xla: true\n", True),
            ("model:\n  stss_jit: false\n", False),  # the name of earlier versions
        ],
    )
    def test_the_run_config_sets_the_stss_xla_policy(self, run, config, expected):
        from selfy_tf.ops import stss_xla_enabled

        paths, _ = run
        if config is not None:
            with open(paths.config, "w", encoding="utf-8") as handle:
                handle.write(config)
        loaded = run_dir.load_model(paths.root)
        assert loaded.stss_xla is expected
        before = stss_xla_enabled()
        with loaded.stss_xla_scope():
            assert stss_xla_enabled() is expected
        assert stss_xla_enabled() is before

    def test_label_count_must_match(self, run, tmp_path):
        paths, _ = run
        other = tmp_path / "other.txt"
        other.write_text("a\nb\n")
        with pytest.raises(ValueError, match="has 2 class names but the model .* has 3 classes"):
            run_dir.load_model(paths.root, str(other))

    def test_a_saved_model_is_refused_with_what_to_do(self, tmp_path):
        version = tmp_path / "selfy" / "1"
        version.mkdir(parents=True)
        (version / "saved_model.pb").write_bytes(b"")
        with pytest.raises(ValueError, match="is an exported SavedModel, not a Keras model"):
            run_dir.load_model(str(tmp_path / "selfy"))


class TestOpenSplit:
    def test_files_counts_labels_and_frames(self, tmp_path):
        from tfrecords import open_split, write_split

        clips = [
            (np.full((num_frames, 16, 20, 3), 10 * index, np.uint8), index % 2, f"clip{index}")
            for index, num_frames in enumerate((3, 5, 4))
        ]
        write_split(str(tmp_path), "validation", clips, ["a", "b"], 2)
        split = open_split(str(tmp_path), "validation")
        assert [os.path.basename(path) for path in split.files] == [
            "validation-00000-of-00002.tfrecord", "validation-00001-of-00002.tfrecord",
        ]
        assert split.num_examples == 3 and split.labels == ["a", "b"]
        assert (split.frames["min"], split.frames["max"]) == (3, 5)
        # Without the manifest the clips are counted.
        os.remove(tmp_path / "validation.manifest.json")
        split = open_split(str(tmp_path), "validation")
        assert split.num_examples == 3 and split.frames == {}

    def test_missing_split(self, tmp_path):
        from tfrecords import open_split

        (tmp_path / "labels.txt").write_text("a\nb\n")
        with pytest.raises(ValueError, match=r"No 'train' clips in .*: nothing matches .*train-\*\.tfrecord"):
            open_split(str(tmp_path), "train")
        assert open_split(str(tmp_path), "train", required=False).num_examples == 0

    def test_bad_manifest_names_the_file(self, tmp_path):
        from tfrecords import open_split

        (tmp_path / "labels.txt").write_text("a\nb\n")
        (tmp_path / "train-00000-of-00001.tfrecord").write_bytes(b"")
        (tmp_path / "train.manifest.json").write_text("{")
        with pytest.raises(ValueError, match=r"train.manifest.json: not a valid manifest"):
            open_split(str(tmp_path), "train")
