"""Streams in deployment: the SavedModel stream signature, `selfy serve`, LiteRT."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from selfy_tf import streaming
from selfy_tf.models import create_model
from serving.client import LocalClient, RestClient, StreamSessions
from serving.export import export_saved_model
from serving.tflite_runtime import TFLiteStream

LABELS = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def causal_model():
    # Seeded: the int8 bound below holds for most initialisations, not all
    # (0.03 to 0.25 of the logits' scale over seeds 0-5, 0.31 seen unseeded).
    keras.utils.set_random_seed(0)
    model = create_model("selfy_tsm_r18.tiny", num_classes=len(LABELS), causal=True)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        if "gamma" in weight.path or "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def stream_export(causal_model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("stream_export"))
    export_saved_model(causal_model, base, name="selfy", labels=LABELS, stream=True)
    return base


def _clip(seed: int, num_frames: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (num_frames, 32, 32, 3), dtype=np.uint8)


def _keras_steps(model: keras.Model, clip: np.ndarray) -> np.ndarray:
    """Step logits of the Keras stream, `[num_frames, classes]`."""
    stream = streaming.stream_model(model)
    states = streaming.initial_states(stream, 1)
    logits = []
    for frame in clip:
        frame_logits, states = streaming.step(stream, frame[None], states)
        logits.append(frame_logits[0])
    return np.stack(logits)


def _session_steps(sessions: StreamSessions, stream_id, clip: np.ndarray) -> np.ndarray:
    return np.stack([sessions.step(stream_id, frame)[0] for frame in clip])


class TestStreamSignature:
    def test_local_sessions_equal_keras_and_keep_streams_apart(self, causal_model, stream_export):
        sessions = StreamSessions(LocalClient(os.path.join(stream_export, "selfy")))
        first, second = _clip(1), _clip(2)
        expected_first, expected_second = _keras_steps(causal_model, first), _keras_steps(causal_model, second)
        # Two streams interleaved frame by frame: each keeps its own state.
        received = {"one": [], "two": []}
        for frame_one, frame_two in zip(first, second):
            received["one"].append(sessions.step("one", frame_one)[0])
            received["two"].append(sessions.step("two", frame_two)[0])
        scale = np.abs(expected_first).max()
        np.testing.assert_allclose(np.stack(received["one"]), expected_first, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(np.stack(received["two"]), expected_second, rtol=0, atol=1e-5 * scale)
        assert sorted(sessions.stream_ids) == ["one", "two"]
        sessions.reset("one")
        np.testing.assert_allclose(
            _session_steps(sessions, "one", first[:2]), expected_first[:2], rtol=0, atol=1e-5 * scale
        )

    def test_signature_inputs_are_frame_and_states(self, causal_model, stream_export):
        sessions = StreamSessions(LocalClient(os.path.join(stream_export, "selfy")))
        stream = streaming.stream_model(causal_model)
        assert sessions.frame_shape == (32, 32, 3)
        assert {name: spec[0] for name, spec in sessions.state_specs.items()} == {
            name: shape for name, (shape, _) in streaming.state_specs(stream).items()
        }

    def test_not_causal_model_is_refused(self, tmp_path):
        model = create_model("selfy_tsm_r18.tiny", num_classes=len(LABELS))
        with pytest.raises(ValueError, match="causal=True"):
            export_saved_model(model, str(tmp_path), name="selfy", labels=LABELS, stream=True)
        assert not os.listdir(os.path.join(tmp_path, "selfy"))

    def test_model_without_stream_signature(self, exported_model):
        with pytest.raises(ValueError, match="no `predict_stream` signature"):
            StreamSessions(LocalClient(os.path.join(exported_model.base, "selfy")))

    @pytest.mark.slow
    def test_selfy_serve_round_trip(self, causal_model, stream_export):
        from serving.server import ModelServer

        server = ModelServer(stream_export, name="selfy", rest_port=0, grpc_port=None).start()
        try:
            client = RestClient(server.rest_url, model="selfy")
            clip = _clip(3, num_frames=3)
            expected = _keras_steps(causal_model, clip)
            received = _session_steps(StreamSessions(client), "camera", clip)
            np.testing.assert_allclose(received, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
            client.close()
        finally:
            server.stop()


class TestTFLiteStream:
    @pytest.mark.slow
    def test_cli_converts_a_keras_file_and_the_stream_matches(self, causal_model, tmp_path, capsys):
        from selfy_cli.main import main

        model_path = str(tmp_path / "causal.keras")
        causal_model.save(model_path)
        labels_path = tmp_path / "labels.txt"
        labels_path.write_text("\n".join(LABELS) + "\n")
        out = str(tmp_path / "stream.tflite")
        command = ["tflite", model_path, "--labels", str(labels_path), "--stream", "--out", out, "--check-clips", "1"]
        assert main(command) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["stream"] and summary["check_relative_max_abs_diff"] <= 1e-4
        runtime = TFLiteStream(out)
        assert runtime.labels == LABELS
        clip = _clip(4)
        expected = _keras_steps(causal_model, clip)
        received = np.stack([runtime.step(frame)[0] for frame in clip])
        np.testing.assert_allclose(received, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
        # reset: the same clip again gives the same logits; without it, not.
        continued = runtime.step(clip[0])[0]
        runtime.reset()
        np.testing.assert_array_equal(runtime.step(clip[0])[0], received[0])
        assert np.abs(continued - received[0]).max() > 1e-3
        with pytest.raises(ValueError, match="`frame` must have shape"):
            runtime.step(np.zeros((16, 16, 3), np.uint8))

    @pytest.mark.slow
    def test_cli_fp16_stream_matches_keras_with_float32_states(self, causal_model, tmp_path, capsys):
        from selfy_cli.main import main
        from serving import tflite_inspect

        model_path = str(tmp_path / "causal.keras")
        causal_model.save(model_path)
        labels_path = tmp_path / "labels.txt"
        labels_path.write_text("\n".join(LABELS) + "\n")
        out = str(tmp_path / "stream_fp16.tflite")
        command = ["tflite", model_path, "--labels", str(labels_path), "--stream", "--out", out,
                   "--quantize", "fp16", "--check-clips", "1"]
        assert main(command) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["stream"] and summary["quantize"] == "fp16"
        # Weights stored in float16, dequantized to float32 for the arithmetic.
        assert "DEQUANTIZE" in tflite_inspect.op_counts(tflite_inspect.list_operators(out))
        runtime = TFLiteStream(out)
        # The states keep the Keras stream's names and shapes, in float32:
        # only the weights are in float16, not the interface.
        specs = streaming.state_specs(streaming.stream_model(causal_model))
        assert runtime.state_shapes == {name: (1, *shape) for name, (shape, _) in specs.items()}
        assert {str(state.dtype) for state in runtime.states.values()} == {"float32"}
        clip = _clip(10)
        expected = _keras_steps(causal_model, clip)
        received = np.stack([runtime.step(frame)[0] for frame in clip])
        # float16 keeps 11 significant bits: each weight is off by up to
        # 2**-11 (~5e-4) of itself, and these errors add up through the
        # layers and the states (5e-4 to 8e-4 of the logits' scale measured
        # on this model). 5e-3 bounds that with room to spare, while states
        # lost between frames move the logits by about half their scale.
        scale = np.abs(expected).max()
        np.testing.assert_allclose(received, expected, rtol=0, atol=5e-3 * scale)
        assert summary["check_relative_max_abs_diff"] <= 5e-3

    @pytest.mark.slow
    def test_int8_stream_is_calibrated_on_stream_states(self, causal_model):
        from serving.stream import convert_stream_model

        clip = _clip(5)
        expected = _keras_steps(causal_model, clip)
        model_bytes = convert_stream_model(causal_model, "int8", calibration_clips=[_clip(6)[None], _clip(7)[None]])
        runtime = TFLiteStream(model_bytes)
        received = np.stack([runtime.step(frame)[0] for frame in clip])
        # int8 activations: a coarse bound, far below a wrong state (~1 of the scale).
        assert np.abs(received - expected).max() / np.abs(expected).max() <= 0.3

    @pytest.mark.slow
    def test_causal_clip_model_converts(self, causal_model):
        from serving import tflite
        from serving.tflite_runtime import TFLiteClassifier

        classifier = TFLiteClassifier(tflite.convert_model(causal_model))
        clips = np.stack([_clip(8, num_frames=4)])
        parity = tflite.compare_with_keras(causal_model, classifier, clips)
        assert parity["relative_max_abs_diff"] <= 1e-4

    def test_clip_model_is_not_a_stream(self):
        import tensorflow as tf

        clip_like = tf.function(lambda frames: {"logits": tf.reduce_mean(frames, axis=[1, 2, 3])})
        concrete = clip_like.get_concrete_function(tf.TensorSpec([1, 2, 4, 4, 3], tf.float32, name="frames"))
        model_bytes = tf.lite.TFLiteConverter.from_concrete_functions([concrete], clip_like).convert()
        with pytest.raises(ValueError, match="not a stream model"):
            TFLiteStream(model_bytes)


class TestPredictStream:
    def test_timeline_equals_the_keras_stream(self, causal_model, tmp_path, capsys):
        from selfy_cli.main import main

        model_path = str(tmp_path / "causal.keras")
        causal_model.save(model_path)
        (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
        clip = _clip(9, num_frames=4)
        video = str(tmp_path / "clip.npy")
        np.save(video, clip)
        command = ["predict", video, "--model", model_path, "--stream", "--smooth", "2", "--fps", "2", "--json"]
        assert main(command) == 0
        timeline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["timeline"]
        # Each frame goes through the model's evaluation view (the tested
        # component here is the frame-by-frame stream and its smoothing).
        from selfy_tf.eval_view import view_from_clip_shape

        prepared = view_from_clip_shape((4, 32, 32)).views_numpy(clip)[0]
        logits = _keras_steps(causal_model, prepared).astype(np.float64)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        for index, entry in enumerate(timeline):
            smoothed = probabilities[max(0, index - 1) : index + 1].mean(axis=0)
            assert entry["time_s"] == index / 2
            assert entry["label"] == LABELS[int(smoothed.argmax())]
            assert abs(entry["score"] - smoothed.max()) < 1e-5
        assert len(timeline) == 4
