"""TFLite / LiteRT conversion: signatures, parity, int8, Flex check, inspection, CLI.

One tiny `selfy_tsm_r18` is trained for a few steps on a learnable synthetic
task (the class is the colour tint of the clip), exported once, and
converted in every quantization mode; `tsn_r18` and `tsm_r18` convert once
each (through the CLI for `tsm_r18`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

NUM_FRAMES = 4
INPUT_SIZE = 32
NUM_CLASSES = 4
LABELS = ("red", "green", "blue", "yellow")
_TINTS = np.array([[150, 0, 0], [0, 150, 0], [0, 0, 150], [150, 150, 0]], np.int64)


def _tinted_clips(seed: int, num_clips: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 clips `[n, T, S, S, 3]` whose class is a colour tint over noise."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_clips) % NUM_CLASSES)
    noise = rng.integers(0, 106, (num_clips, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3))
    clips = noise + _TINTS[labels][:, None, None, None, :]
    return clips.astype(np.uint8), labels.astype(np.int32)


def _numpy_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _litert(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # No default delegate: the execution plan then lists the converted ops.
    interpreter = Interpreter(
        model_content=model_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def _compute_op_input_dtypes(model_bytes: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """`(op name, dtypes of its first two inputs)` of every conv/matmul op, read
    from the interpreter's tensors (independent of `serving.tflite_inspect`)."""
    interpreter = _litert(model_bytes)
    compute = {"CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "CONV_3D_TRANSPOSE",
               "TRANSPOSE_CONV", "FULLY_CONNECTED", "BATCH_MATMUL"}
    found = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in compute:
            dtypes = tuple(
                np.dtype(interpreter._get_tensor_details(index, 0)["dtype"]).name
                for index in op["inputs"][:2]
            )
            found.append((op["op_name"], dtypes))
    return found


@pytest.fixture(scope="module")
def trained(tiny_model_factory, tmp_path_factory):
    """A tiny selfy_tsm_r18 trained briefly on tinted clips, its SavedModel for
    conversion, held-out clips and TFRecord calibration data."""
    import types

    import keras

    import tfrecords
    from serving import tflite

    keras.utils.set_random_seed(0)
    model = tiny_model_factory(
        "selfy_tsm_r18",
        num_classes=NUM_CLASSES,
        num_frames=NUM_FRAMES,
        input_size=INPUT_SIZE,
        dropout=0.0,
    )
    train_clips, train_labels = _tinted_clips(seed=1, num_clips=48)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(
        train_clips.astype(np.float32), train_labels, batch_size=16, epochs=3, verbose=0
    )
    held_out_clips, held_out_labels = _tinted_clips(seed=2, num_clips=64)
    keras_logits = model.predict(held_out_clips.astype(np.float32), verbose=0)

    data_dir = tmp_path_factory.mktemp("calibration")
    calibration_clips, calibration_labels = _tinted_clips(seed=3, num_clips=16)
    tfrecords.write_split(
        str(data_dir),
        "validation",
        [(clip, int(label), f"clip{index}") for index, (clip, label) in
         enumerate(zip(calibration_clips, calibration_labels))],
        LABELS,
    )
    saved_model_dir = str(tmp_path_factory.mktemp("tflite_export"))
    tflite.export_for_conversion(model, saved_model_dir)
    return types.SimpleNamespace(
        model=model,
        saved_model_dir=saved_model_dir,
        held_out_clips=held_out_clips,
        held_out_accuracy=float(np.mean(keras_logits.argmax(-1) == held_out_labels)),
        keras_logits=keras_logits,
        data_dir=str(data_dir),
        cache={},
    )


def _converted(trained, quantize: str) -> bytes:
    from selfy_tf.eval_view import EvalView
    from serving import tflite, tflite_calibration

    if quantize not in trained.cache:
        representative = None
        if quantize == "int8":
            representative = tflite_calibration.representative_dataset(
                trained.data_dir, EvalView(NUM_FRAMES, INPUT_SIZE), num_clips=16
            )
        trained.cache[quantize] = tflite.convert_saved_model(
            trained.saved_model_dir, quantize, representative
        )
    return trained.cache[quantize]


def _tflite_logits(model_bytes: bytes, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from serving.tflite_runtime import TFLiteClassifier

    classifier = TFLiteClassifier(model_bytes, num_threads=2)
    outputs = [classifier.predict(clip) for clip in clips]
    return (
        np.concatenate([output["logits"] for output in outputs]),
        np.concatenate([output["probabilities"] for output in outputs]),
    )


class TestTFLiteConversion:
    def test_trained_model_learned_the_task(self, trained):
        # The int8 agreement below is only meaningful on a model that learned.
        assert trained.held_out_accuracy >= 0.9

    def test_signature_input_and_outputs(self, trained):
        interpreter = _litert(_converted(trained, "none"))
        assert interpreter.get_signature_list() == {
            "serving_default": {"inputs": ["frames"], "outputs": ["logits", "probabilities"]}
        }
        runner = interpreter.get_signature_runner("serving_default")
        frames = runner.get_input_details()["frames"]
        assert np.dtype(frames["dtype"]) == np.uint8
        assert tuple(frames["shape"]) == (1, NUM_FRAMES, INPUT_SIZE, INPUT_SIZE, 3)
        outputs = runner.get_output_details()
        assert tuple(outputs["logits"]["shape"]) == (1, NUM_CLASSES)
        assert np.dtype(outputs["probabilities"]["dtype"]) == np.float32

    @pytest.mark.parametrize("quantize, tolerance", [("none", 1e-4), ("fp16", 1e-2)])
    def test_float_parity_with_keras(self, trained, quantize, tolerance):
        clips = trained.held_out_clips[:8]
        logits, probabilities = _tflite_logits(_converted(trained, quantize), clips)
        reference = trained.keras_logits[:8]
        relative = np.max(np.abs(logits - reference)) / np.max(np.abs(reference))
        print(f"{quantize}: max |logit diff| / max |logit| = {relative:.2e}")
        assert relative <= tolerance
        np.testing.assert_allclose(probabilities, _numpy_softmax(logits), atol=1e-5)

    def test_fp16_stores_half_precision_weights(self, trained):
        from serving import tflite_inspect

        none_size = len(_converted(trained, "none"))
        fp16 = _converted(trained, "fp16")
        assert len(fp16) < 0.7 * none_size
        assert "DEQUANTIZE" in tflite_inspect.op_counts(tflite_inspect.list_operators(fp16))

    def test_dynamic_range_has_int8_weights(self, trained):
        interpreter = _litert(_converted(trained, "dynamic"))
        weight_dtypes = {
            np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()
        }
        assert "int8" in weight_dtypes
        logits, _ = _tflite_logits(_converted(trained, "dynamic"), trained.held_out_clips[:8])
        agreement = np.mean(logits.argmax(-1) == trained.keras_logits[:8].argmax(-1))
        assert agreement >= 0.75

    def test_int8_every_conv_and_matmul_takes_int8(self, trained):
        found = _compute_op_input_dtypes(_converted(trained, "int8"))
        names = {name for name, _ in found}
        assert {"CONV_2D", "BATCH_MATMUL", "FULLY_CONNECTED"} <= names
        assert all(dtypes == ("int8", "int8") for _, dtypes in found), found

    def test_int8_top1_agreement_with_fp32(self, trained):
        clips = trained.held_out_clips
        fp32_logits, _ = _tflite_logits(_converted(trained, "none"), clips)
        int8_logits, probabilities = _tflite_logits(_converted(trained, "int8"), clips)
        agreement = float(np.mean(fp32_logits.argmax(-1) == int8_logits.argmax(-1)))
        print(f"int8 vs fp32 top-1 agreement on {len(clips)} held-out clips: {agreement:.3f}")
        assert agreement >= 0.95
        np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=0.05)

    def test_builtin_ops_only(self, trained):
        from serving import tflite_inspect

        for quantize in ("none", "fp16", "dynamic", "int8"):
            operators = tflite_inspect.list_operators(_converted(trained, quantize))
            assert tflite_inspect.flex_ops(operators) == [], quantize
            assert not any(op.custom or op.name.startswith("Flex") for op in operators)
        # The int8 model quantises once, at the input: no float islands.
        counts = tflite_inspect.op_counts(tflite_inspect.list_operators(_converted(trained, "int8")))
        assert counts.get("QUANTIZE", 0) == 1

    def test_float32_input_on_tsn(self, tiny_model_factory):
        from serving import tflite
        from serving.tflite_runtime import TFLiteClassifier

        model = tiny_model_factory("tsn_r18", num_classes=3, num_frames=2, input_size=32)
        model_bytes = tflite.convert_model(model, input_dtype="float32")
        classifier = TFLiteClassifier(model_bytes)
        assert classifier.input_dtype == np.float32
        clip = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
        reference = model.predict(clip[None], verbose=0)
        logits = classifier.predict(clip)["logits"]
        assert np.max(np.abs(logits - reference)) <= 1e-4 * np.max(np.abs(reference))


class TestConversionOptions:
    def test_stss_xla_is_switched_off_for_conversion(self, tiny_model_factory):
        import tensorflow as tf

        from selfy_tf.ops import stss_xla, stss_xla_enabled
        from serving import tflite

        model = tiny_model_factory(num_classes=2, num_frames=2)
        spec = tf.TensorSpec([1, 2, 32, 32, 3], tf.float32)
        with stss_xla(True):
            traced = tf.function(lambda frames: model(frames, training=False))
            assert tflite.xla_functions(traced.get_concrete_function(spec))
            with tflite.export_settings(model):
                untraced = tf.function(lambda frames: model(frames, training=False))
                assert tflite.xla_functions(untraced.get_concrete_function(spec)) == []
            assert stss_xla_enabled(), "the setting is restored after the context"

    def test_mixed_precision_model_is_converted_in_float32(self, tiny_model_factory):
        # A model trained with mixed_bfloat16 (e.g. on a GPU) has bfloat16
        # layers, which TFLite's builtins do not take.
        from selfy_tf.models import with_dtype_policy
        from serving import tflite

        model = tiny_model_factory(num_classes=3, num_frames=2)
        assert tflite.float32_model(model) is model
        mixed = with_dtype_policy(model, "mixed_bfloat16")
        converted = tflite.float32_model(mixed)
        assert {layer.compute_dtype for layer in converted.layers if layer.weights} == {"float32"}
        clips = np.random.default_rng(3).uniform(0, 255, (2, 2, 32, 32, 3)).astype("float32")
        np.testing.assert_allclose(
            np.asarray(converted(clips, training=False)), np.asarray(model(clips, training=False)),
            rtol=0, atol=1e-6,
        )

    def test_patches_backend_is_refused(self, tiny_model_factory):
        from serving import tflite

        model = tiny_model_factory(num_classes=2, num_frames=2, stss_backend="patches")
        with pytest.raises(ValueError, match="stss_backend='patches'.*not a TFLite builtin"):
            tflite.convert_model(model)
        with tflite.export_settings(model, stss_backend="matmul"):
            assert {layer.stss_backend for layer in tflite._stss_layers(model)} == {"matmul"}
        assert {layer.stss_backend for layer in tflite._stss_layers(model)} == {"patches"}

    def test_bad_options(self, tiny_model_factory, tmp_path):
        from serving import tflite, tflite_calibration

        model = tiny_model_factory("tsn_r18", num_classes=2, num_frames=2)
        with pytest.raises(ValueError, match=r"`quantize` must be one of .* quantize='int4'"):
            tflite.convert_model(model, quantize="int4")
        with pytest.raises(ValueError, match="input_dtype='int8'"):
            tflite.convert_model(model, input_dtype="int8")
        with pytest.raises(ValueError, match="needs calibration clips"):
            tflite.convert_model(model, quantize="int8")
        with pytest.raises(ValueError, match="stss_backend='bogus'"):
            tflite.convert_model(model, stss_backend="bogus")
        from selfy_tf.eval_view import EvalView

        with pytest.raises(FileNotFoundError, match="matches no TFRecord file"):
            tflite_calibration.representative_dataset(str(tmp_path), EvalView(2, 32))
        with pytest.raises(FileNotFoundError, match="no shard of split `test`"):
            tflite_calibration.representative_dataset(str(tmp_path), EvalView(2, 32), split="test")
        with pytest.raises(ValueError, match="num_clips=0"):
            tflite_calibration.representative_dataset(str(tmp_path), EvalView(2, 32), num_clips=0)
        with pytest.raises(ValueError, match=r"class 1 \(line 2\): class names must be non-empty single lines"):
            tflite.write_model(b"", str(tmp_path / "m.tflite"), ["a", ""])

    def test_not_a_flatbuffer(self, tmp_path):
        from serving import tflite_inspect

        path = tmp_path / "bad.tflite"
        path.write_bytes(b"not a model at all")
        with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
            tflite_inspect.list_operators(str(path))
        with pytest.raises(FileNotFoundError, match="TFLite model not found"):
            tflite_inspect.list_operators(str(tmp_path / "missing.tflite"))

    def test_wrong_clip_shape(self, trained):
        from serving.tflite_runtime import TFLiteClassifier

        classifier = TFLiteClassifier(_converted(trained, "none"))
        with pytest.raises(ValueError, match=r"Received: frames.shape=\(1, 3, 32, 32, 3\)"):
            classifier.predict(np.zeros((3, 32, 32, 3), np.uint8))


class TestInspection:
    def test_report(self, trained):
        from serving import tflite_inspect

        model_bytes = _converted(trained, "int8")
        report = tflite_inspect.inspect_model(model_bytes, num_threads=2, num_runs=1)
        assert report["size_bytes"] == len(model_bytes)
        assert report["flex_ops"] == []
        assert report["non_int8_compute_ops"] == []
        assert report["num_ops"] == sum(report["op_counts"].values()) == len(report["per_op"])
        assert report["inputs"]["frames"]["dtype"] == "uint8"
        timed = [entry["latency_ms"] for entry in report["per_op"]]
        assert all(value is not None and value >= 0 for value in timed)
        assert report["invoke_ms"] > 0
        text = tflite_inspect.format_report(report)
        assert "flex/custom ops: none" in text and "slowest" in text
        json.dumps(report)

    def test_float_model_flags_non_int8_compute_ops(self, trained):
        from serving import tflite_inspect

        operators = tflite_inspect.list_operators(_converted(trained, "none"))
        offenders = tflite_inspect.non_int8_compute_ops(operators)
        assert offenders and all(op.input_types[0] == "FLOAT32" for op in offenders)

    def test_single_op_model_reproduces_the_op(self, trained):
        from serving import tflite_inspect

        model_bytes = _converted(trained, "none")
        clip = trained.held_out_clips[:1]
        # The recorded values of a conv's output equal the one-op model's output.
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        keep = Interpreter(
            model_content=model_bytes,
            experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        keep.get_signature_runner()(frames=clip)
        model_object = tflite_inspect._model_object(model_bytes)
        conv = next(op for op in tflite_inspect.list_operators(model_bytes) if op.name == "CONV_2D")
        single, feed, outputs = tflite_inspect._single_op_model(model_object, conv.index)
        interpreter = Interpreter(model_content=single)
        interpreter.allocate_tensors()
        for detail, original in zip(interpreter.get_input_details(), feed):
            interpreter.set_tensor(detail["index"], keep.get_tensor(original))
        interpreter.invoke()
        result = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(result, keep.get_tensor(outputs[0]), rtol=1e-5, atol=1e-5)


class TestCommandLine:
    def test_tflite_command_on_a_run_directory(self, trained, tiny_model_factory, tmp_path, capsys):
        from selfy_cli.main import main
        from serving.tflite_runtime import TFLiteClassifier

        run = tmp_path / "run"
        (run / "checkpoints").mkdir(parents=True)
        model = tiny_model_factory("tsm_r18", num_classes=3, num_frames=2, input_size=32)
        model.save(run / "checkpoints" / "best.keras")
        (run / "labels.txt").write_text("open\nclose\npush\n")
        out = tmp_path / "out" / "tsm.tflite"
        status = main([
            "tflite", str(run), "--out", str(out), "--quantize", "int8",
            "--calibration-data", trained.data_dir, "--calibration-clips", "4",
        ])
        assert status == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["size_bytes"] == os.path.getsize(out)
        assert summary["labels"] == f"{out}.labels.txt"
        assert (tmp_path / "out" / "tsm.tflite.labels.txt").read_text() == "open\nclose\npush\n"
        assert summary["quantize"] == "int8" and 0.0 <= summary["check_top1_agreement"] <= 1.0
        classifier = TFLiteClassifier(str(out))
        assert classifier.labels == ["open", "close", "push"]

        status = main(["tflite-inspect", str(out), "--runs", "1", "--json"])
        assert status == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert report["flex_ops"] == [] and report["per_op"]
        assert main(["tflite-inspect", str(out), "--no-profile", "--expect-int8"]) == 0
        float_model = tmp_path / "float.tflite"
        float_model.write_bytes(_converted(trained, "none"))
        assert main(["tflite-inspect", str(float_model), "--no-profile", "--expect-int8"]) == 1
        assert "do not take int8 inputs" in capsys.readouterr().err

    def test_tflite_command_errors(self, tmp_path, capsys):
        from selfy_cli.main import main

        out = str(tmp_path / "m.tflite")
        assert main(["tflite", str(tmp_path), "--out", out, "--quantize", "int8"]) == 1
        assert "needs `--calibration-data DIR`" in capsys.readouterr().err
        assert main(["tflite", str(tmp_path), "--out", out]) == 1
        assert "No checkpoint in run directory" in capsys.readouterr().err
        with pytest.raises(SystemExit) as error:
            main(["tflite", str(tmp_path), "--out", out, "--quantize", "int4"])
        assert error.value.code == 2
        with pytest.raises(SystemExit):
            main(["tflite", str(tmp_path), "--out", out, "--stss-backend", "patches"])


@pytest.mark.large
def test_every_zoo_model_converts_with_builtins_only(tiny_model_factory):
    from selfy_tf.models import list_models
    from serving import tflite, tflite_inspect
    from serving.tflite_runtime import TFLiteClassifier

    for name in list_models():
        model = tiny_model_factory(name, num_classes=3, num_frames=2, input_size=32)
        model_bytes = tflite.convert_model(model)
        assert tflite_inspect.flex_ops(tflite_inspect.list_operators(model_bytes)) == [], name
        clip = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        reference = model.predict(clip[None].astype(np.float32), verbose=0)
        logits = TFLiteClassifier(model_bytes).predict(clip)["logits"]
        assert np.max(np.abs(logits - reference)) <= 1e-4 * np.max(np.abs(reference)), name


_BLOCKED_IMPORTS = r'''
import importlib.abc
import sys


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked: the LiteRT runtime must not import it")
        return None


sys.meta_path.insert(0, _Block())
'''


class TestRuntimeWithoutTensorFlow:
    def test_predict_video_runs_with_tensorflow_and_keras_blocked(self, trained, tmp_path):
        import subprocess
        import sys

        from selfy_tf.eval_view import EvalView
        from serving import tflite

        view = EvalView(NUM_FRAMES, INPUT_SIZE, scale_size=40)
        model_path = str(tmp_path / "model.tflite")
        tflite.write_model(_converted(trained, "none"), model_path, list(LABELS), view)
        # A user-size clip: 9 frames of 64x80, another count and size than the model's.
        clip = np.random.default_rng(7).integers(0, 256, (9, 64, 80, 3), dtype=np.uint8)
        clip_path = str(tmp_path / "clip.npy")
        np.save(clip_path, clip)
        script = _BLOCKED_IMPORTS + (
            "import json\n"
            "from serving.tflite_runtime import TFLiteClassifier\n"
            f"classifier = TFLiteClassifier({model_path!r})\n"
            f"outputs = classifier.predict_video({clip_path!r})\n"
            "print(json.dumps({'labels': classifier.labels, 'view': classifier.view_settings,\n"
            "    'logits': outputs['logits'].tolist(),\n"
            "    'blocked': [name for name in ('tensorflow', 'keras') if name in sys.modules]}))\n"
        )
        completed = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        assert result["blocked"] == []
        assert result["labels"] == list(LABELS)
        assert result["view"] == {"scale_size": 40}
        expected = trained.model(view.views_numpy(clip).astype(np.float32), training=False).numpy()
        np.testing.assert_allclose(result["logits"], expected, atol=1e-3, rtol=0)

    def test_predict_refuses_another_shape_and_points_to_predict_video(self, trained):
        from serving.tflite_runtime import TFLiteClassifier

        classifier = TFLiteClassifier(_converted(trained, "none"))
        with pytest.raises(ValueError, match="use `predict_video`"):
            classifier.predict(np.zeros((24, 128, 160, 3), np.uint8))
        frames = np.random.default_rng(8).integers(0, 256, (24, 128, 160, 3), dtype=np.uint8)
        # Without a stored view: the default rule, short side round(32 * 256 / 224).
        from selfy_tf.eval_view import EvalView

        expected = classifier.predict(EvalView(NUM_FRAMES, INPUT_SIZE).views_numpy(frames)[0])["logits"]
        np.testing.assert_array_equal(classifier.predict_video(frames)["logits"], expected)

