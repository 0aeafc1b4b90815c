"""The evaluation view: sampling, resize rule, crops; NumPy and TensorFlow forms agree."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from selfy_tf.eval_view import EvalView, default_scale_size, resize_bilinear_numpy


def _reference_resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Plain-loop bilinear resize with half-pixel centres, rounded half up."""
    in_height, in_width = frame.shape[:2]
    out = np.zeros((height, width, frame.shape[2]), np.float64)
    for row in range(height):
        y = (row + 0.5) * in_height / height - 0.5
        y0 = math.floor(y)
        y_lerp = y - y0
        top, bottom = min(max(y0, 0), in_height - 1), min(max(y0 + 1, 0), in_height - 1)
        for column in range(width):
            x = (column + 0.5) * in_width / width - 0.5
            x0 = math.floor(x)
            x_lerp = x - x0
            left, right = min(max(x0, 0), in_width - 1), min(max(x0 + 1, 0), in_width - 1)
            upper = frame[top, left] * (1 - x_lerp) + frame[top, right] * x_lerp
            lower = frame[bottom, left] * (1 - x_lerp) + frame[bottom, right] * x_lerp
            out[row, column] = upper * (1 - y_lerp) + lower * y_lerp
    return np.floor(out + 0.5).astype(np.uint8)


def _clip(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


class TestEvalViewBasic:
    def test_default_scale_size_is_the_256_224_ratio(self):
        assert default_scale_size(224) == 256
        assert EvalView(4, 32).scale_size == round(32 * 256 / 224) == 37

    def test_resize_target_keeps_the_aspect_ratio_rounding_half_up(self):
        view = EvalView(4, 32)
        assert view.resize_target(64, 80) == (37, 46)  # 80 * 37 / 64 = 46.25
        assert view.resize_target(80, 64) == (46, 37)
        assert EvalView(4, 4, scale_size=5).resize_target(4, 6) == (5, 8)  # 7.5 -> 8
        assert EvalView(4, 32, eval_size=(240, 320)).resize_target(64, 80) == (240, 320)

    def test_the_storage_resize_rounds_half_up_as_the_view(self):
        from tfrecords.video import output_size

        # 4x5 to a short side of 2: the long side is 2.5, rounded up (Python's round() gives 2).
        assert output_size(4, 5, resize_short=2) == (2, 3)
        assert output_size(5, 4, resize_short=2) == (3, 2)
        assert output_size(6, 7, resize_short=3) == (3, 4)  # 3.5
        for height, width, short_side in [(4, 5, 2), (240, 320, 128), (7, 10, 4), (10, 7, 4), (9, 9, 5)]:
            view = EvalView(1, short_side, scale_size=short_side)
            assert output_size(height, width, resize_short=short_side) == view.resize_target(height, width)

    def test_resize_settings_round_trip(self):
        for view in (EvalView(4, 32), EvalView(4, 32, scale_size=40), EvalView(4, 32, eval_size=(36, 48))):
            again = EvalView.from_settings(view.resize_settings(), 4, 32)
            assert again == view

    @pytest.mark.parametrize(
        "kwargs, message",
        [
            (dict(scale_size=40, eval_size=(40, 50)), "Give `scale_size` or `eval_size`, not both"),
            (dict(scale_size=20), "`scale_size` must be >= crop_size=32"),
            (dict(eval_size=(30, 50)), r"`eval_size` must be \(height, width\), both >= crop_size=32"),
            (dict(num_crops=2), "`num_crops` must be 1 or 3. Received: num_crops=2"),
            (dict(num_clips=0), "`num_clips` must be at least 1"),
        ],
    )
    def test_bad_settings(self, kwargs, message):
        with pytest.raises(ValueError, match=message):
            EvalView(4, 32, **kwargs)

    def test_unknown_stored_setting(self):
        with pytest.raises(ValueError, match=r"Unknown evaluation view settings \['size'\]"):
            EvalView.from_settings({"size": 3}, 4, 32)

    def test_numpy_form_rejects_a_non_clip(self):
        with pytest.raises(ValueError, match=r"Received: shape \(8, 8, 3\)"):
            EvalView(4, 4).views_numpy(np.zeros((8, 8, 3), np.uint8))


class TestEvalViewCorrectness:
    def test_numpy_resize_matches_a_plain_loop(self):
        frames = _clip(2, 7, 9)
        for height, width in ((5, 6), (11, 13), (7, 4)):
            expected = np.stack([_reference_resize(frame, height, width) for frame in frames])
            got = resize_bilinear_numpy(frames, height, width)
            # float32 against float64 arithmetic: a value at .5 may round either way.
            assert np.abs(got.astype(int) - expected).max() <= 1
            assert np.mean(got == expected) > 0.95

    def test_frames_at_the_target_size_are_only_sampled_and_cropped(self):
        frames = _clip(10, 48, 64)
        views = EvalView(3, 32, eval_size=(48, 64), num_crops=3).views_numpy(frames)
        indices = [int(10 / 3 * (segment + 0.5)) for segment in range(3)]
        for crop, left in enumerate((0, 16, 32)):
            np.testing.assert_array_equal(views[crop], frames[indices, 8:40, left : left + 32])

    def test_portrait_crops_run_along_the_height(self):
        frames = _clip(4, 64, 48)
        views = EvalView(4, 32, eval_size=(64, 48), num_crops=3).views_numpy(frames)
        for crop, top in enumerate((0, 16, 32)):
            np.testing.assert_array_equal(views[crop], frames[:, top : top + 32, 8:40])

    def test_multi_view_layout_is_clip_major(self):
        frames = _clip(12, 48, 64)
        views = EvalView(2, 32, eval_size=(48, 64), num_clips=2, num_crops=3).views_numpy(frames)
        assert views.shape == (6, 2, 32, 32, 3)
        for clip in range(2):
            indices = [int(12 / 2 * (segment + (clip + 0.5) / 2)) for segment in range(2)]
            for crop, left in enumerate((0, 16, 32)):
                np.testing.assert_array_equal(
                    views[clip * 3 + crop], frames[indices, 8:40, left : left + 32]
                )

    def test_short_side_resize_then_centre_crop(self):
        frames = _clip(4, 20, 30)
        view = EvalView(4, 16, scale_size=18)
        resized = np.stack([_reference_resize(frame, 18, 27) for frame in frames])
        expected = resized[:, 1:17, 5:21]
        assert np.abs(view.views_numpy(frames)[0].astype(int) - expected).max() <= 1

    @pytest.mark.parametrize("shape", [(20, 64, 80), (7, 80, 64), (3, 37, 50), (5, 48, 60)])
    @pytest.mark.parametrize(
        "kwargs",
        [dict(), dict(num_clips=2, num_crops=3), dict(eval_size=(48, 60)), dict(scale_size=40, num_crops=3)],
    )
    def test_tensorflow_form_equals_numpy_form(self, shape, kwargs):
        frames = _clip(*shape, seed=sum(shape))
        view = EvalView(4, 32, **kwargs)
        expected = view.views_numpy(frames)
        np.testing.assert_array_equal(view.views_tf(frames).numpy(), expected)
        # A batch axis in front, as the serving signatures use it.
        np.testing.assert_array_equal(view.views_tf(frames[None]).numpy()[0], expected)


# ---------------------------------------------------------------------------
# One trained tiny model, one user-size dataset (64x80 frames, not 240x320):
# every path that scores it uses the same view.

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    import types

    from trainer import apply_overrides, get_preset, train
    from trainer.synthetic import write_color_dataset

    root = tmp_path_factory.mktemp("one_view")
    data_dir = write_color_dataset(
        str(root / "data"), num_classes=NUM_CLASSES, num_train=16, num_validation=12,
        num_frames=7, height=64, width=80,
    )
    config = apply_overrides(get_preset("tiny_cpu"), ["train.epochs=2", "train.backup_every_steps=100"])
    run_dir = str(root / "run")
    train(config, data_dir, run_dir, verbose=0)
    return types.SimpleNamespace(root=root, data_dir=data_dir, run_dir=run_dir)


def _decoded_validation_clips(data_dir: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Every validation clip, all frames decoded at their stored 64x80 size."""
    import tensorflow as tf

    from tfrecords import Decoder, open_split
    from tfrecords.decoder import ENCODED_FRAMES, LABEL

    decoder = Decoder()
    clips, labels = [], []
    for record in tf.data.TFRecordDataset(open_split(data_dir, "validation").files):
        decoded = decoder.decode(record)
        frames = [tf.io.decode_jpeg(encoded).numpy() for encoded in decoded[ENCODED_FRAMES]]
        clips.append(np.stack(frames))
        labels.append(int(decoded[LABEL]))
    return clips, np.asarray(labels)


def _confusion(predictions: np.ndarray, labels: np.ndarray, num_classes: int = NUM_CLASSES) -> list[list[int]]:
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return confusion.tolist()


# ---------------------------------------------------------------------------
# `selfy eval` of a model, of its SavedModel export and of its .tflite: the
# same clips, the same scores, the same report.

KINDS_CLASSES = ["red", "green", "blue"]


def _colour_clips(count: int) -> list[tuple[np.ndarray, int, str]]:
    """Clips of one noisy colour each, 6 frames of 40x48 (resized and cropped by the view)."""
    rng = np.random.default_rng(3)
    clips = []
    for index in range(count):
        colour = rng.integers(0, 256, (1, 1, 1, 3))
        frames = np.clip(colour + rng.normal(0, 12, (6, 40, 48, 3)), 0, 255).astype(np.uint8)
        clips.append((frames, index % len(KINDS_CLASSES), f"clip{index}"))
    return clips


@pytest.fixture(scope="module")
def model_and_exports(tmp_path_factory, tiny_model_factory):
    """A tiny model as `.keras` (with a stored view that is not the default), its export and its .tflite."""
    import types

    import keras

    from selfy_cli.main import main
    from selfy_tf import run_dir
    from tfrecords import write_split

    root = tmp_path_factory.mktemp("model_kinds")
    model = tiny_model_factory(num_classes=len(KINDS_CLASSES))
    view = EvalView(num_frames=4, crop_size=32, scale_size=36)
    clips = _colour_clips(9)
    # A random model gives every clip nearly the same features, so it
    # predicts one class for all. Its head is fitted instead to map each
    # clip's features to a chosen class (not always the true one), so that
    # the predictions, and whether they agree, mean something.
    features_model = keras.Model(model.inputs[0], model.get_layer("avgpool").output)
    views = np.concatenate([view.views_numpy(frames) for frames, _, _ in clips]).astype(np.float32)
    features = np.asarray(features_model(views, training=False)).reshape(len(clips), view.num_frames, -1).mean(1)
    centre = features.mean(axis=0)
    centred = features - centre
    chosen = np.array([0, 1, 2, 0, 2, 1, 1, 2, 2])
    targets = 4.0 * (np.eye(len(KINDS_CLASSES))[chosen] - 1 / len(KINDS_CLASSES))
    # Ridge regression: JPEG coding moves the features a little; an exact fit
    # of 9 clips would amplify that.
    gram = centred.T @ centred
    ridge = 0.01 * np.trace(gram) / gram.shape[0] * np.eye(gram.shape[0])
    kernel = np.linalg.solve(gram + ridge, centred.T @ targets).astype(np.float32)
    model.get_layer("new_fc").set_weights([kernel, (-centre @ kernel).astype(np.float32)])
    keras_file = str(root / "model.keras")
    run_dir.save_model(model, keras_file, view)
    run_dir.write_labels(str(root / "labels.txt"), KINDS_CLASSES)
    data_dir = str(root / "data")
    write_split(data_dir, "validation", clips, KINDS_CLASSES)
    base = str(root / "exported")
    assert main(["export", keras_file, "--out", base]) == 0
    tflite_file = str(root / "model.tflite")
    assert main(["tflite", keras_file, "--out", tflite_file, "--check-clips", "0"]) == 0
    return types.SimpleNamespace(
        model=model, keras_file=keras_file, saved_model=os.path.join(base, "selfy"), tflite_file=tflite_file,
        data_dir=data_dir,
    )


def _reference_scores(model, data_dir: str, view: EvalView) -> tuple[np.ndarray, np.ndarray]:
    """Softmax scores averaged over views: NumPy view of every decoded clip, then the Keras model."""
    clips, labels = _decoded_validation_clips(data_dir)
    scores = []
    for clip in clips:
        logits = np.asarray(model(view.views_numpy(clip).astype(np.float32), training=False), np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        scores.append((probabilities / probabilities.sum(-1, keepdims=True)).mean(axis=0))
    return np.stack(scores), labels


class TestEvalOfExports:
    def test_eval_of_the_model_its_saved_model_and_its_tflite_agree(self, model_and_exports, tmp_path, capsys):
        from selfy_cli.main import main

        kinds = model_and_exports
        reference, labels = _reference_scores(kinds.model, kinds.data_dir, EvalView(4, 32, scale_size=36))
        predictions = reference.argmax(-1)
        # Predictions differ between clips, and no two classes are close to a
        # tie that float rounding could break.
        assert len(set(predictions.tolist())) > 1 and 0 < np.mean(predictions == labels) < 1, predictions
        ranked = np.sort(reference, axis=-1)
        assert np.min(ranked[:, -1] - ranked[:, -2]) > 1e-3, reference
        for name, model in (("keras", kinds.keras_file), ("saved_model", kinds.saved_model), ("tflite", kinds.tflite_file)):
            assert main(["eval", model, "--data", kinds.data_dir, "--out", str(tmp_path / name)]) == 0
            summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            with open(tmp_path / name / "eval.json") as handle:
                report = json.load(handle)
            assert summary["top1"] == report["top1"], name
            assert report["eval_view"] == {"scale_size": 36}, name
            assert report["num_examples"] == 9, name
            assert report["top1"] == pytest.approx(np.mean(predictions == labels)), name
            assert report["confusion_matrix"] == _confusion(predictions, labels, len(KINDS_CLASSES)), name
            assert os.path.isfile(tmp_path / name / "confusion_matrix.png"), name

    def test_scores_of_several_views_match_the_numpy_reference(self, model_and_exports):
        from trainer.evaluate import predict_split

        kinds = model_and_exports
        view = EvalView(4, 32, scale_size=36, num_clips=2, num_crops=3)
        reference, labels = _reference_scores(kinds.model, kinds.data_dir, view)
        for model in (kinds.keras_file, kinds.saved_model, kinds.tflite_file):
            scores = predict_split(model, kinds.data_dir, num_clips=2, num_crops=3, verbose=False)
            assert scores.view == view, model
            np.testing.assert_array_equal(scores.labels, labels)
            # The SavedModel folds its batch norms: equal to float rounding.
            np.testing.assert_allclose(scores.scores, reference, atol=1e-4, err_msg=model)
            np.testing.assert_array_equal(scores.scores.argmax(-1), reference.argmax(-1))

    def test_saved_model_report_goes_beside_its_versions(self, model_and_exports, tmp_path, capsys):
        import shutil

        from selfy_cli.main import main

        saved_model = tmp_path / "selfy"
        shutil.copytree(model_and_exports.saved_model, saved_model)
        assert main(["eval", str(saved_model), "--data", model_and_exports.data_dir]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["files"]["eval_json"] == str(saved_model / "eval.json")
        assert os.path.isfile(saved_model / "eval.json")
        assert sorted(os.listdir(saved_model / "1")) == sorted(os.listdir(os.path.join(model_and_exports.saved_model, "1")))

    def test_report_dir_of_each_kind_of_model(self, model_and_exports, tmp_path):
        import shutil

        from selfy_tf.run_dir import RunPaths
        from trainer.evaluate import report_dir

        kinds = model_and_exports
        folder = os.path.dirname(kinds.keras_file)
        assert report_dir(kinds.keras_file) == folder
        assert report_dir(kinds.tflite_file) == folder
        # A SavedModel's `BASE/<name>`, whether given as it or as a version folder.
        assert report_dir(kinds.saved_model) == kinds.saved_model
        assert report_dir(os.path.join(kinds.saved_model, "1")) == kinds.saved_model
        # A run, or a checkpoint in it (a .tflite file there stays beside its file).
        run = RunPaths(str(tmp_path / "run"))
        os.makedirs(run.checkpoints)
        shutil.copy(kinds.keras_file, run.best_checkpoint)
        shutil.copy(kinds.tflite_file, os.path.join(run.checkpoints, "model.tflite"))
        assert report_dir(run.root) == run.root
        assert report_dir(run.best_checkpoint) == run.root
        assert report_dir(os.path.join(run.checkpoints, "model.tflite")) == run.checkpoints
        with pytest.raises(FileNotFoundError, match="No model at"):
            report_dir(str(tmp_path / "missing"))

    def test_evaluate_writes_no_report_unless_given_a_folder(self, model_and_exports):
        from trainer.evaluate import evaluate

        kinds = model_and_exports
        before = sorted(os.listdir(os.path.dirname(kinds.tflite_file)))
        report = evaluate(kinds.tflite_file, kinds.data_dir, max_batches=1, verbose=False)
        assert report["files"] == {} and report["num_examples"] > 0
        assert sorted(os.listdir(os.path.dirname(kinds.tflite_file))) == before


@pytest.mark.slow
class TestOneViewEverywhere:
    def test_eval_export_and_litert_score_the_same_view(self, trained_run, capsys):
        import tensorflow as tf

        from selfy_cli.main import main
        from serving.tflite_runtime import TFLiteClassifier

        run_dir, data_dir = trained_run.run_dir, trained_run.data_dir
        best = os.path.join(run_dir, "checkpoints", "best.keras")
        # `selfy eval RUN` and `selfy eval best.keras` (outside its run: a copy).
        copy_dir = trained_run.root / "copied"
        copy_dir.mkdir()
        shutil.copy(best, copy_dir / "model.keras")
        reports = []
        for model in (run_dir, str(copy_dir / "model.keras")):
            assert main(["eval", model, "--data", data_dir]) == 0
            summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            with open(summary["files"]["eval_json"]) as handle:
                reports.append(json.load(handle))
        assert reports[0]["eval_view"] == reports[1]["eval_view"] == {"scale_size": 37}
        # The SavedModel (exported by `selfy export RUN`) and LiteRT (`selfy tflite RUN`).
        base = str(trained_run.root / "exported")
        assert main(["export", run_dir, "--out", base]) == 0
        export_summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        tflite_path = str(trained_run.root / "model.tflite")
        assert main(["tflite", run_dir, "--out", tflite_path, "--check-clips", "0"]) == 0
        capsys.readouterr()
        saved_model = tf.saved_model.load(export_summary["path"])
        classifier = TFLiteClassifier(tflite_path)
        clips, labels = _decoded_validation_clips(data_dir)
        served = np.concatenate(
            [
                saved_model.signatures["predict_frames"](frames=tf.constant(clip[None]))["probabilities"].numpy()
                for clip in clips
            ]
        )
        litert = np.concatenate([classifier.predict_video(clip)["probabilities"] for clip in clips])
        np.testing.assert_allclose(litert, served, atol=1e-4)
        # `selfy eval` of what is served: the SavedModel and the LiteRT model.
        for model in (os.path.dirname(export_summary["path"]), tflite_path):
            assert main(["eval", model, "--data", data_dir, "--out", str(trained_run.root / "eval_exported")]) == 0
            summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            with open(summary["files"]["eval_json"]) as handle:
                reports.append(json.load(handle))
        assert [report["eval_view"] for report in reports] == [{"scale_size": 37}] * 4
        for report in reports:
            assert report["confusion_matrix"] == _confusion(served.argmax(-1), labels)
            assert report["confusion_matrix"] == _confusion(litert.argmax(-1), labels)
            assert report["top1"] == pytest.approx(np.mean(served.argmax(-1) == labels))

    def test_multi_view_is_not_far_below_single_view(self, trained_run):
        from trainer import evaluate

        single = evaluate(trained_run.run_dir, trained_run.data_dir, output_dir=None)
        multi = evaluate(trained_run.run_dir, trained_run.data_dir, num_clips=2, num_crops=3, output_dir=None)
        assert single["top1"] > 1 / NUM_CLASSES
        assert multi["top1"] >= single["top1"] - 0.1

    def test_evaluation_follows_the_runs_stss_xla_policy(self, trained_run, tmp_path, monkeypatch):
        import importlib
        import shutil

        import yaml

        from selfy_tf.run_dir import RunPaths

        # The module (the package exports its `evaluate` function under the same name).
        evaluate_lib = importlib.import_module("trainer.evaluate")

        run = str(tmp_path / "run")
        shutil.copytree(trained_run.run_dir, run, ignore=shutil.ignore_patterns("backup", "logs"))
        with open(RunPaths(run).config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
        assert config["runtime"]["stss_xla"] is True
        config["runtime"]["stss_xla"] = False
        with open(RunPaths(run).config, "w", encoding="utf-8") as handle:
            yaml.safe_dump(config, handle)
        switches = []
        real_switch = evaluate_lib.stss_xla

        def recording_switch(enabled):
            switches.append(enabled)
            return real_switch(enabled)

        monkeypatch.setattr(evaluate_lib, "stss_xla", recording_switch)
        reports = [
            evaluate_lib.evaluate(path, trained_run.data_dir, output_dir=None, max_batches=1, verbose=False)
            for path in (trained_run.run_dir, run)
        ]
        assert switches == [True, False]
        assert reports[1]["confusion_matrix"] == reports[0]["confusion_matrix"]
