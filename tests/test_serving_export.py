"""Tests of `serving.export` / `serving.signatures` / `serving.warmup` and `selfy export`."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving.export import export_saved_model


def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def loaded(exported_model):
    return tf.saved_model.load(exported_model.result.path)


class TestExportLayout:
    def test_version_folder_and_server_configs(self, exported_model):
        base = exported_model.base
        assert sorted(os.listdir(base)) == ["batching.config", "models.config", "selfy"]
        assert os.listdir(os.path.join(base, "selfy")) == ["1"]  # no temporary left over
        version_dir = exported_model.result.path
        for entry in ("saved_model.pb", "variables", "assets", "assets.extra"):
            assert os.path.exists(os.path.join(version_dir, entry)), entry
        with open(os.path.join(version_dir, "assets", "labels.txt")) as handle:
            assert handle.read().splitlines() == exported_model.labels

    def test_the_evaluation_view_is_recorded_beside_the_graph(self, exported_model):
        from selfy_tf.eval_view import EvalView
        from selfy_tf.run_dir import load_model

        version_dir = exported_model.result.path
        with open(os.path.join(version_dir, "assets.extra", "selfy.json")) as handle:
            record = json.load(handle)
        # The tiny model takes 4 frames of 32x32; no view given: the short side to round(32 * 256 / 224).
        assert record == {"eval_view": {"scale_size": 37}, "num_frames": 4, "input_size": 32}
        loaded_model = load_model(os.path.dirname(version_dir), allow_saved_model=True)
        assert (loaded_model.view_settings, loaded_model.clip_shape) == ({"scale_size": 37}, (4, 32, 32))
        assert loaded_model.eval_view(num_clips=2) == EvalView(4, 32, scale_size=37, num_clips=2)

    def test_models_config_is_a_model_server_config(self, exported_model):
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        with open(os.path.join(exported_model.base, "models.config")) as handle:
            config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
        (model_config,) = config.model_config_list.config
        assert model_config.name == "selfy"
        assert model_config.base_path == "/models/selfy"
        assert model_config.model_platform == "tensorflow"
        with open(os.path.join(exported_model.base, "batching.config")) as handle:
            batching = handle.read()
        for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
            assert re.search(rf"^{field} {{ value: \d+ }}$", batching, re.M), field

    def test_saved_model_cli_lists_exactly_the_signatures(self, exported_model, capsys):
        # `saved_model_cli show --all --dir DIR`, run in-process (a subprocess
        # would spend its time importing TensorFlow again).
        from tensorflow.python.tools import saved_model_cli

        capsys.readouterr()
        saved_model_cli._show_all(exported_model.result.path)
        shown = capsys.readouterr().out
        names = re.findall(r"signature_def\['([^']+)'\]", shown)
        assert sorted(names) == ["__saved_model_init_op", "predict_frames", "serving_default"]
        blocks = dict(zip(names, re.split(r"signature_def\['[^']+'\]", shown)[1:]))
        assert "inputs['frames_jpeg']" in blocks["serving_default"]
        assert "dtype: DT_STRING" in blocks["serving_default"]
        # Any number of frames (and any frame size for predict_frames).
        assert "shape: (-1, -1)" in blocks["serving_default"]
        assert "inputs['frames']" in blocks["predict_frames"]
        assert "dtype: DT_UINT8" in blocks["predict_frames"]
        assert "shape: (-1, -1, -1, -1, 3)" in blocks["predict_frames"]
        for signature in ("serving_default", "predict_frames"):
            outputs = re.findall(r"outputs\['([^']+)'\]", blocks[signature])
            assert sorted(outputs) == sorted(
                ["logits", "probabilities", "top_k_indices", "top_k_scores", "top_k_labels"]
            )
            assert "Method name is: tensorflow/serving/predict" in blocks[signature]

    def test_no_xla_in_the_graph(self, exported_model, tmp_path):
        # The fixture was exported with the STSS XLA switch on.
        with open(os.path.join(exported_model.result.path, "saved_model.pb"), "rb") as handle:
            assert b"_XlaMustCompile" not in handle.read()
        # Positive control: an inner jit-compiled function is saved with the
        # attribute, so the byte check above can fail.
        module = tf.Module()
        module.double = tf.function(lambda x: 2 * x, jit_compile=True)
        module.serve = tf.function(lambda x: module.double(x) + 1, input_signature=[tf.TensorSpec([2])])
        tf.saved_model.save(module, str(tmp_path / "xla"))
        with open(tmp_path / "xla" / "saved_model.pb", "rb") as handle:
            assert b"_XlaMustCompile" in handle.read()


class TestExportCorrectness:
    def test_batch_norms_are_folded_unless_asked_not_to(self, exported_model, tmp_path):
        with open(os.path.join(exported_model.result.path, "saved_model.pb"), "rb") as handle:
            assert b"FusedBatchNorm" not in handle.read()
        result = export_saved_model(exported_model.model, str(tmp_path), labels=exported_model.labels,
                                    fold_batch_norms=False)
        with open(os.path.join(result.path, "saved_model.pb"), "rb") as handle:
            assert b"FusedBatchNorm" in handle.read()

    def test_predict_frames_matches_keras(self, exported_model, loaded):
        frames = np.random.default_rng(1).integers(0, 256, (3, 4, 32, 32, 3), dtype=np.uint8)
        outputs = loaded.signatures["predict_frames"](frames=tf.constant(frames))
        expected = exported_model.model(frames.astype(np.float32), training=False).numpy()
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-5, rtol=0)
        probabilities = _softmax(expected.astype(np.float64))
        np.testing.assert_allclose(outputs["probabilities"].numpy(), probabilities, atol=1e-5)
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :3]
        np.testing.assert_array_equal(outputs["top_k_indices"].numpy(), order)
        np.testing.assert_allclose(
            outputs["top_k_scores"].numpy(), np.take_along_axis(probabilities, order, -1), atol=1e-5
        )
        labels = np.array(exported_model.labels)[order]
        np.testing.assert_array_equal(outputs["top_k_labels"].numpy().astype(str), labels)

    def test_serving_default_decodes_and_centre_crops(self, exported_model, loaded):
        # Frames whose short side already equals the default scale size
        # round(32 * 256 / 224) = 37: the resize is the identity and the crop
        # starts at ((37-32)//2, (50-32)//2).
        rng = np.random.default_rng(2)
        clips = rng.integers(0, 256, (2, 4, 37, 50, 3), dtype=np.uint8)
        encoded = np.array([[_png(frame) for frame in clip] for clip in clips], dtype=object)
        outputs = loaded.signatures["serving_default"](frames_jpeg=tf.constant(encoded))
        cropped = clips[:, :, 2:34, 9:41, :].astype(np.float32)
        expected = exported_model.model(cropped, training=False).numpy()
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-4, rtol=0)

    def test_serving_default_resizes_any_frame_size(self, loaded):
        frames = np.random.default_rng(3).integers(0, 256, (4, 90, 60, 3), dtype=np.uint8)
        encoded = np.array([[_png(frame) for frame in frames]], dtype=object)
        outputs = loaded.signatures["serving_default"](frames_jpeg=tf.constant(encoded))
        assert outputs["logits"].shape == (1, 5)

    def test_serving_default_samples_any_number_of_frames(self, loaded):
        # 10 frames: the graph keeps the segment centres of 4 segments,
        # floor(2.5 * (s + 0.5)) = 1, 3, 6, 8, exactly as if only those were sent.
        frames = np.random.default_rng(4).integers(0, 256, (10, 37, 50, 3), dtype=np.uint8)
        whole = np.array([[_png(frame) for frame in frames]], dtype=object)
        sampled = np.array([[_png(frames[index]) for index in (1, 3, 6, 8)]], dtype=object)
        outputs = loaded.signatures["serving_default"](frames_jpeg=tf.constant(whole))
        expected = loaded.signatures["serving_default"](frames_jpeg=tf.constant(sampled))
        np.testing.assert_allclose(outputs["logits"].numpy(), expected["logits"].numpy(), atol=1e-5)
        # One frame is repeated for every segment.
        single = np.array([[_png(frames[0])]], dtype=object)
        repeated = np.array([[_png(frames[0])] * 4], dtype=object)
        np.testing.assert_allclose(
            loaded.signatures["serving_default"](frames_jpeg=tf.constant(single))["logits"].numpy(),
            loaded.signatures["serving_default"](frames_jpeg=tf.constant(repeated))["logits"].numpy(),
            atol=1e-5,
        )

    def test_no_frame_is_an_invalid_argument(self, loaded):
        with pytest.raises(tf.errors.InvalidArgumentError, match="at least one frame"):
            loaded.signatures["serving_default"](frames_jpeg=tf.zeros([1, 0], tf.string))
        with pytest.raises(tf.errors.InvalidArgumentError, match="at least one frame"):
            loaded.signatures["predict_frames"](frames=tf.zeros([1, 0, 32, 32, 3], tf.uint8))

    def test_predict_frames_applies_the_evaluation_view(self, exported_model, loaded):
        from selfy_tf.eval_view import EvalView

        frames = np.random.default_rng(5).integers(0, 256, (9, 64, 80, 3), dtype=np.uint8)
        outputs = loaded.signatures["predict_frames"](frames=tf.constant(frames[None]))
        view = EvalView(num_frames=4, crop_size=32)  # the default view of the export
        expected = exported_model.model(view.views_numpy(frames).astype(np.float32), training=False)
        np.testing.assert_allclose(outputs["logits"].numpy(), expected.numpy(), atol=1e-4, rtol=0)

    def test_corrupt_frame_is_an_invalid_argument(self, loaded):
        encoded = tf.constant([[b"not an image"] * 4])
        with pytest.raises(tf.errors.InvalidArgumentError):
            loaded.signatures["serving_default"](frames_jpeg=encoded)

    def test_warmup_records_are_prediction_logs(self, exported_model, loaded):
        from serving.warmup import read_warmup_requests

        logs = read_warmup_requests(exported_model.result.path)
        assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
            "serving_default", "predict_frames",
        ]
        for log in logs:
            request = log.predict_log.request
            assert request.model_spec.name == "selfy"
            inputs = {key: tf.make_tensor_proto(tf.make_ndarray(value)) for key, value in request.inputs.items()}
            function = loaded.signatures[request.model_spec.signature_name]
            outputs = function(**{key: tf.constant(tf.make_ndarray(value)) for key, value in inputs.items()})
            assert outputs["logits"].shape == (1, 5)


class TestExportErrors:
    def test_bad_arguments(self, exported_model, tmp_path):
        model = exported_model.model
        with pytest.raises(ValueError, match="has 2 class names but the model has 5 classes"):
            export_saved_model(model, str(tmp_path), labels=["a", "b"])
        with pytest.raises(ValueError, match="`name` must be a plain folder name"):
            export_saved_model(model, str(tmp_path), name="a/b", labels=exported_model.labels)
        with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
            export_saved_model(model, str(tmp_path), labels=exported_model.labels, top_k=0)
        with pytest.raises(FileExistsError, match="version 1 already exists"):
            export_saved_model(model, exported_model.base, labels=exported_model.labels, version=1)
        with pytest.raises(ValueError, match="`scale_size` must be >= crop_size=32"):
            export_saved_model(model, str(tmp_path), labels=exported_model.labels, view_settings={"scale_size": 16})
        long_label = ["x" * 513] + exported_model.labels[1:]
        with pytest.raises(ValueError, match="a class name of 513 characters .* at most 512"):
            export_saved_model(model, str(tmp_path), labels=long_label)

    def test_signature_config_and_labels_files(self, tmp_path):
        from selfy_tf.eval_view import EvalView
        from selfy_tf.run_dir import read_labels
        from serving.signatures import SignatureConfig

        with pytest.raises(ValueError, match="`view` must be an EvalView with one clip and one crop"):
            SignatureConfig(view=EvalView(4, 32, num_crops=3), top_k=1)
        with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
            SignatureConfig(view=EvalView(4, 32), top_k=0)
        config = SignatureConfig(view=EvalView(4, 32), top_k=1)
        assert (config.num_frames, config.input_size, config.view.scale_size) == (4, 32, 37)
        path = tmp_path / "labels.txt"
        path.write_text("a\n\nc\n")
        with pytest.raises(ValueError, match=r"labels.txt class 1 \(line 2\): class names must be non-empty"):
            read_labels(str(path))

    def test_load_model_errors(self, tmp_path):
        from selfy_tf.run_dir import load_model

        with pytest.raises(FileNotFoundError, match="No checkpoint in run directory"):
            load_model(str(tmp_path))
        with pytest.raises(FileNotFoundError, match="No model at"):
            load_model(str(tmp_path / "missing.keras"))
        model_file = tmp_path / "elsewhere" / "model.keras"
        model_file.parent.mkdir()
        model_file.write_bytes(b"")
        with pytest.raises(FileNotFoundError, match="No labels.txt for"):
            load_model(str(model_file), require_labels=True)

    def test_next_version_and_listing(self, tmp_path):
        from serving.export import _next_version, list_versions

        for entry in ("1", "7", ".tmp-8-x", "notes"):
            (tmp_path / entry).mkdir()
        assert list_versions(str(tmp_path)) == [1, 7]
        assert _next_version(str(tmp_path), None) == 8
        assert _next_version(str(tmp_path), 3) == 3


class TestExportCommand:
    def test_export_a_run_directory(self, exported_model, tmp_path, capsys):
        from selfy_cli.main import main

        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        exported_model.model.save(str(run / "checkpoints" / "best.keras"))
        (run / "labels.txt").write_text("\n".join(exported_model.labels) + "\n")
        base = tmp_path / "base"
        shutil.copytree(exported_model.base, base)
        status = main(["export", str(run), "--out", str(base), "--name", "selfy", "--top-k", "2",
                       "--no-fold-batch-norms"])
        assert status == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["version"] == 2 and summary["top_k"] == 2
        assert summary["fold_batch_norms"] is False
        with open(os.path.join(summary["path"], "saved_model.pb"), "rb") as handle:
            assert b"FusedBatchNorm" in handle.read()
        assert summary["path"] == str(base / "selfy" / "2")
        assert sorted(os.listdir(base / "selfy")) == ["1", "2"]

    def test_export_with_a_dtype_policy(self, exported_model, tmp_path, capsys):
        from selfy_cli.main import main
        from selfy_tf.models import fold_batch_norms, with_dtype_policy

        model_path = tmp_path / "model.keras"
        exported_model.model.save(str(model_path))
        (tmp_path / "labels.txt").write_text("\n".join(exported_model.labels) + "\n")
        status = main(["export", str(model_path), "--labels", str(tmp_path / "labels.txt"),
                       "--out", str(tmp_path / "base"), "--dtype-policy", "mixed_bfloat16"])
        assert status == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["dtype_policy"] == "mixed_bfloat16" and summary["fold_batch_norms"] is True
        frames = np.random.default_rng(2).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
        outputs = tf.saved_model.load(summary["path"]).signatures["predict_frames"](frames=tf.constant(frames))
        assert outputs["logits"].dtype == tf.float32
        bf16 = fold_batch_norms(with_dtype_policy(exported_model.model, "mixed_bfloat16"))
        expected = bf16(frames.astype(np.float32), training=False).numpy()
        np.testing.assert_allclose(outputs["logits"].numpy(), expected, atol=1e-5, rtol=0)
        float32 = exported_model.model(frames.astype(np.float32), training=False).numpy()
        assert np.abs(expected - float32).max() > 0  # the export really computes in bfloat16

    def test_export_errors_exit_1(self, tmp_path, capsys):
        from selfy_cli.main import main

        assert main(["export", str(tmp_path / "missing.keras"), "--out", str(tmp_path)]) == 1
        assert "No model at" in capsys.readouterr().err

    def test_predict_accepts_a_frame_folder(self, exported_model, loaded, tmp_path, capsys):
        from selfy_cli.main import main
        from tfrecords.features import encode_frames

        frames = np.random.default_rng(6).integers(0, 256, (7, 48, 60, 3), dtype=np.uint8)
        folder = tmp_path / "frames"
        folder.mkdir()
        for index, frame in enumerate(frames):
            (folder / f"{index:05d}.png").write_bytes(_png(frame))
        assert main(["predict", str(folder), "--model", exported_model.result.path, "--json"]) == 0
        top_k = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top_k"]
        # The client sends every frame as a JPEG; the graph samples and crops them.
        jpeg = np.stack([tf.io.decode_jpeg(encoded).numpy() for encoded in encode_frames(frames)])
        expected = loaded.signatures["predict_frames"](frames=tf.constant(jpeg[None]))
        probabilities = expected["probabilities"].numpy()[0]
        assert [entry["index"] for entry in top_k] == list(np.argsort(-probabilities, kind="stable")[:3])
        np.testing.assert_allclose(
            [entry["score"] for entry in top_k], np.sort(probabilities)[::-1][:3], atol=1e-4
        )
