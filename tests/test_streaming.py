"""Causal models and frame-by-frame streaming (`selfy_tf.streaming`)."""

from __future__ import annotations

import csv
import itertools

import keras
import numpy as np
import pytest
from keras import ops

from selfy_tf import streaming
from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.stss_transformation import STSSTransformation
from selfy_tf.layers.temporal_shift import TemporalShift
from selfy_tf.models import create_model
from selfy_tf.ops import stss, stss_last_frame
from selfy_tf.ops._backend import is_tensorflow

TINY = {"num_classes": 5, "num_frames": 4, "input_size": 32, "width_multiplier": 0.125, "dropout": 0.0}


def _np_causal_shift(x: np.ndarray, num_frames: int, fold_div: int) -> np.ndarray:
    """Causal shift, one frame at a time: channels [0, C/fold_div) from frame t - 1."""
    clips = x.reshape(-1, num_frames, *x.shape[1:])
    fold = x.shape[-1] // fold_div
    out = clips.copy()
    for clip in range(clips.shape[0]):
        for t in range(num_frames):
            out[clip, t, ..., :fold] = clips[clip, t - 1, ..., :fold] if t > 0 else 0.0
    return out.reshape(x.shape)


def _np_causal_stss(features: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """Causal STSS by its definition, one element at a time (float64)."""
    features = np.asarray(features, np.float64)
    batch, num_frames, height, width, _ = features.shape
    length, height_window, width_window = window
    normalized = features / np.sqrt(np.sum(features**2, axis=-1, keepdims=True) + 1e-6)
    output = np.zeros((batch, num_frames, height, width, *window))
    for b, t, y, x, l, u, v in itertools.product(
        range(batch), range(num_frames), range(height), range(width),
        range(length), range(height_window), range(width_window),
    ):
        other_t = t + l - (length - 1)
        other_y = y + u - height_window // 2
        other_x = x + v - width_window // 2
        if 0 <= other_t < num_frames and 0 <= other_y < height and 0 <= other_x < width:
            output[b, t, y, x, l, u, v] = np.dot(
                normalized[b, t, y, x], normalized[b, other_t, other_y, other_x]
            )
    return output


def _randomize_statistics(model: keras.Model, seed: int = 0) -> None:
    """Batch norm statistics and scales away from the identity, so every branch matters."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        path = weight.path
        if "gamma" in path or "moving_variance" in path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif "beta" in path or "moving_mean" in path:
            weight.assign(rng.normal(0.0, 0.1, weight.shape).astype("float32"))


def _frame_logits(model: keras.Model, clip: np.ndarray) -> np.ndarray:
    """The model's per-frame logits `[batch, num_frames, classes]` (before the average)."""
    per_frame = keras.Model(model.input, model.get_layer("new_fc").output)
    logits = ops.convert_to_numpy(per_frame(clip.astype("float32"), training=False))
    return logits.reshape(clip.shape[0], clip.shape[1], -1)


@pytest.fixture(scope="module")
def causal_selfy():
    model = create_model("selfy_tsm_r18.tiny", num_classes=5, causal=True)
    _randomize_statistics(model)
    return model


class TestCausalLayers:
    def test_causal_shift_matches_numpy(self):
        x = np.random.default_rng(0).normal(size=(6, 2, 3, 17)).astype("float32")
        layer = TemporalShift(num_frames=3, fold_div=4, causal=True)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), _np_causal_shift(x, 3, 4))
        # By hand: one clip of 2 frames, 8 channels, fold 1.
        x = np.arange(16, dtype="float32").reshape(2, 1, 1, 8)
        out = ops.convert_to_numpy(TemporalShift(num_frames=2, causal=True)(x)).reshape(2, 8)
        np.testing.assert_array_equal(out[0], [0, 1, 2, 3, 4, 5, 6, 7])
        np.testing.assert_array_equal(out[1], [0, 9, 10, 11, 12, 13, 14, 15])

    def test_causal_shift_gradient(self, value_and_gradients):
        x = np.random.default_rng(2).normal(size=(6, 2, 3, 16)).astype("float32")
        layer = TemporalShift(num_frames=3, fold_div=4, causal=True)
        _, (gradient,) = value_and_gradients(layer, x, seed=3)
        upstream = np.random.default_rng(3).normal(size=x.shape).astype("float32")
        positions = np.arange(1, x.size + 1, dtype="float64").reshape(x.shape)
        expected = np.zeros(x.size)
        for output_index, source in enumerate(_np_causal_shift(positions, 3, 4).reshape(-1)):
            if source:
                expected[int(source) - 1] += upstream.reshape(-1)[output_index]
        np.testing.assert_array_equal(gradient.reshape(-1), expected)

    @pytest.mark.parametrize("backend", ["matmul", "shift", "patches"])
    @pytest.mark.parametrize("num_frames", [2, 4])
    def test_causal_stss_matches_numpy(self, backend, num_frames):
        if backend == "patches" and not is_tensorflow():
            pytest.skip("the 'patches' backend is TensorFlow-only")
        window = (3, 3, 5)
        features = np.random.default_rng(num_frames).normal(size=(2, num_frames, 4, 5, 6))
        output = ops.convert_to_numpy(
            stss(features.astype("float32"), window=window, backend=backend, causal=True)
        )
        np.testing.assert_allclose(output, _np_causal_stss(features, window), atol=2e-6)

    def test_stss_last_frame_matches_numpy(self):
        window = (3, 5, 3)
        history = np.random.default_rng(5).normal(size=(2, 3, 4, 5, 6))
        history[:, 0] = 0.0  # a frame before the start of the stream
        output = ops.convert_to_numpy(stss_last_frame(history.astype("float32"), window))
        np.testing.assert_allclose(output, _np_causal_stss(history, window)[:, -1:], atol=2e-6)

    def test_stss_last_frame_wrong_length(self):
        with pytest.raises(ValueError, match="must hold L=5 frames"):
            stss_last_frame(np.zeros((1, 3, 4, 4, 2), "float32"), (5, 9, 9))

    def test_causal_in_configs(self):
        shift = TemporalShift(num_frames=2, causal=True)
        assert TemporalShift.from_config(shift.get_config()).causal is True
        transformation = STSSTransformation(2, hidden_channels=4, causal=True)
        assert STSSTransformation.from_config(transformation.get_config()).causal is True
        block = SELFYBlock(2, hidden_channels=8, extraction_channels=(2, 4, 8, 8),
                           integration_channels=(8, 8, 8, 8), causal=True)
        restored = SELFYBlock.from_config(block.get_config())
        assert restored.causal and restored.stss_transformation.causal
        assert TemporalShift(num_frames=2).get_config()["causal"] is False

    def test_bad_causal(self):
        with pytest.raises(ValueError, match="`causal` must be a bool"):
            TemporalShift(num_frames=2, causal="yes")


class TestCausalModels:
    @pytest.mark.parametrize("name", ["tsm_r18", "selfy_tsm_r18"])
    def test_no_frame_depends_on_later_frames(self, name):
        arguments = dict(TINY, selfy_stage="res2", selfy_channels=8) if "selfy" in name else TINY
        model = create_model(name, causal=True, **arguments)
        _randomize_statistics(model, seed=1)
        clip = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3))
        changed = clip.copy()
        changed[:, 2:] = 255 - changed[:, 2:]
        before, after = _frame_logits(model, clip), _frame_logits(model, changed)
        np.testing.assert_array_equal(before[:, :2], after[:, :2])
        assert np.abs(before[:, 2:] - after[:, 2:]).max() > 1e-3

    def test_offline_weights_load_into_causal_model(self, tmp_path):
        offline = create_model("selfy_tsm_r18.tiny", num_classes=5)
        _randomize_statistics(offline, seed=2)
        path = str(tmp_path / "offline.weights.h5")
        offline.save_weights(path)
        causal = create_model("selfy_tsm_r18.tiny", num_classes=5, causal=True, weights=path)
        assert [w.shape for w in causal.weights] == [w.shape for w in offline.weights]
        for loaded, saved in zip(causal.weights, offline.weights):
            np.testing.assert_array_equal(ops.convert_to_numpy(loaded), ops.convert_to_numpy(saved))
        # Same weights, other temporal wiring: the offline model reads later frames.
        clip = np.random.default_rng(1).integers(0, 256, (1, 4, 32, 32, 3))
        assert np.abs(_frame_logits(causal, clip) - _frame_logits(offline, clip)).max() > 1e-3

    def test_causal_model_keras_round_trip(self, causal_selfy, tmp_path):
        path = str(tmp_path / "causal.keras")
        causal_selfy.save(path)
        restored = keras.saving.load_model(path)
        assert restored.get_layer("selfy").causal and restored.get_layer("layer1_0_shift").causal
        clip = np.random.default_rng(2).integers(0, 256, (1, 4, 32, 32, 3))
        np.testing.assert_array_equal(_frame_logits(restored, clip), _frame_logits(causal_selfy, clip))


def _stream_clip(stream: keras.Model, clip: np.ndarray) -> np.ndarray:
    states = streaming.initial_states(stream, clip.shape[0])
    logits = []
    for t in range(clip.shape[1]):
        frame_logits, states = streaming.step(stream, clip[:, t], states)
        logits.append(frame_logits)
    return np.stack(logits, axis=1)


class TestStreaming:
    def _check_exact(self, model: keras.Model, num_frames: int) -> None:
        clip = np.random.default_rng(3).integers(0, 256, (2, num_frames, 32, 32, 3)).astype("uint8")
        steps = _stream_clip(streaming.stream_model(model), clip)
        clip_logits = ops.convert_to_numpy(model(clip.astype("float32"), training=False))
        scale = np.abs(clip_logits).max()
        np.testing.assert_allclose(steps, _frame_logits(model, clip), rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(steps.mean(axis=1), clip_logits, rtol=0, atol=1e-5 * scale)

    def test_selfy_stream_equals_offline(self, causal_selfy):
        self._check_exact(causal_selfy, 4)

    @pytest.mark.parametrize("name", ["tsm_r18", "tsn_r18"])
    def test_backbone_stream_equals_offline(self, name):
        model = create_model(name, causal=True, **TINY)
        _randomize_statistics(model, seed=4)
        self._check_exact(model, 4)

    def test_stream_is_longer_than_a_clip(self, causal_selfy):
        # A stream goes on past num_frames: its step t equals frame t of a
        # causal model of 6 frames with the same weights.
        longer = create_model("selfy_tsm_r18.tiny", num_classes=5, num_frames=6, causal=True)
        longer.set_weights(causal_selfy.get_weights())
        clip = np.random.default_rng(4).integers(0, 256, (1, 6, 32, 32, 3)).astype("uint8")
        steps = _stream_clip(streaming.stream_model(causal_selfy), clip)
        expected = _frame_logits(longer, clip)
        np.testing.assert_allclose(steps, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    def test_state_shapes(self, causal_selfy):
        stream = streaming.stream_model(causal_selfy)
        states = streaming.initial_states(stream, 3)
        shifts = [layer for layer in causal_selfy.layers if isinstance(layer, TemporalShift)]
        block = causal_selfy.get_layer("selfy")
        assert sorted(states) == sorted([layer.name for layer in shifts] + ["selfy_history"])
        for layer in shifts:
            _, height, width, channels = layer.input.shape
            assert states[layer.name].shape == (3, height, width, channels // 8)
        _, height, width, _ = block.input.shape
        assert states["selfy_history"].shape == (3, 4, height // 2, width // 2, 8)
        assert all(not state.any() for state in states.values())

    def test_not_causal_model(self):
        model = create_model("tsm_r18", **TINY)
        with pytest.raises(ValueError, match="causal=True"):
            streaming.stream_model(model)

    def test_bad_frame_and_states(self, causal_selfy):
        stream = streaming.stream_model(causal_selfy)
        states = streaming.initial_states(stream, 1)
        with pytest.raises(ValueError, match="`frame` must be uint8"):
            streaming.step(stream, np.zeros((1, 32, 32, 3), "float32"), states)
        with pytest.raises(ValueError, match="`states` must have the keys"):
            streaming.step(stream, np.zeros((1, 32, 32, 3), "uint8"), {})
        with pytest.raises(ValueError, match="for a batch of 2 frames"):
            streaming.step(stream, np.zeros((2, 32, 32, 3), "uint8"), states)
        with pytest.raises(ValueError, match="`batch_size` must be a positive integer"):
            streaming.initial_states(stream, 0)


class TestCausalTraining:
    # About 45 s of CPU: 40 steps of the small motion model, compilation included.
    @pytest.mark.slow
    def test_selfy_train_fine_tunes_a_causal_model_on_synthetic_motion(self, tmp_path):
        from selfy_cli.main import main
        from selfy_tf.eval_view import view_from_clip_shape
        from trainer import configs, numpy_data

        data = "synthetic:motion:160:100:64"
        # Offline weights in a causal model: the model has learned to read the
        # next frame too, so it starts far below the offline model.
        start = create_model("selfy_tsm_r18.motion", pretrained=True, causal=True)
        validation = numpy_data.load_clip_arrays(data, num_frames=8)
        view = view_from_clip_shape((8, 48, 48))
        clips = np.stack([view.views_numpy(clip)[0] for clip in validation.validation_frames])
        start_logits = ops.convert_to_numpy(start(clips.astype("float32"), training=False))
        start_top1 = float(np.mean(start_logits.argmax(-1) == validation.validation_labels))

        run_dir = tmp_path / "run"
        sets = ["model.causal=true", "data.frame_stride=1", "train.epochs=2", "data.batch_size=8"]
        command = ["train", "--preset", "small_videos_cpu", "--data", data, "--out", str(run_dir)]
        assert main([*command, *[part for item in sets for part in ("--set", item)]]) == 0
        saved = configs.load_yaml(str(run_dir / "config.yaml"))
        assert (saved.model.causal, saved.data.frame_stride) == (True, 1)
        with open(run_dir / "history.csv") as stream:
            val_top1 = float(list(csv.DictReader(stream))[-1]["val_top1"])
        assert val_top1 >= max(0.5, start_top1 + 0.15), (start_top1, val_top1)

        model = keras.saving.load_model(str(run_dir / "checkpoints" / "last.keras"), compile=False)
        assert model.get_layer("selfy").causal and model.get_layer("layer1_0_shift").causal
        clip = clips[:1]
        steps = _stream_clip(streaming.stream_model(model), clip)
        expected = _frame_logits(model, clip)
        np.testing.assert_allclose(steps, expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    def test_bad_frame_stride(self):
        from trainer import configs, presets

        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["data.frame_stride=-1"])
        with pytest.raises(ValueError, match="`data.frame_stride` must be 0"):
            configs.validate(config)
