"""`fold_batch_norms`: batch norms folded into convolutions for inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from selfy_tf.models import FoldedBatchNorm, fold_batch_norms


def _clip(batch: int, num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, num_frames, size, size, 3)).astype("float32")


def _with_random_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Moving statistics and affine parameters far from the identity transform."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("moving_variance", "gamma"):
            variable.assign(rng.uniform(0.5, 2.0, tuple(variable.shape)).astype("float32"))
        elif name in ("moving_mean", "beta"):
            variable.assign(rng.normal(0.0, 0.3, tuple(variable.shape)).astype("float32"))
    return model


def _batch_norm_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize(
    "name, num_norms",
    # Backbone batch norms: ResNet-18 16 + 3 downsample + stem; ResNet-50 48 + 4 + stem.
    [("tsn_r18", 20), ("tsm_r18", 20), ("selfy_tsm_r18", 20), ("tsm_r50", 53)],
)
def test_folded_model_gives_the_same_logits(tiny_model_factory, name, num_norms):
    model = _with_random_statistics(tiny_model_factory(name, num_frames=2))
    folded = fold_batch_norms(model)
    clip = _clip(2, 2, 32)
    expected = np.asarray(model(clip, training=False))
    logits = np.asarray(folded(clip, training=False))
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    # Every backbone batch norm is folded; the original model is untouched.
    assert _batch_norm_names(folded) == []
    placeholders = [layer for layer in folded.layers if isinstance(layer, FoldedBatchNorm)]
    assert [layer.name for layer in placeholders] == _batch_norm_names(model)
    assert len(placeholders) == num_norms
    assert len(_batch_norm_names(model)) == num_norms
    convolutions = [layer for layer in folded.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convolutions and all(layer.use_bias for layer in convolutions)
    assert not any(layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


def test_folded_weights_are_the_batch_norm_transform(tiny_model_factory):
    model = _with_random_statistics(tiny_model_factory("tsn_r18", num_frames=2))
    folded = fold_batch_norms(model)
    conv, norm = model.get_layer("layer1_0_conv1"), model.get_layer("layer1_0_bn1")
    kernel, bias = folded.get_layer("layer1_0_conv1").get_weights()
    gamma, beta, mean, variance = (np.asarray(v, np.float64) for v in norm.get_weights())
    for channel in range(conv.filters):
        scale = gamma[channel] / np.sqrt(variance[channel] + norm.epsilon)
        np.testing.assert_allclose(kernel[..., channel], conv.get_weights()[0][..., channel] * scale,
                                   rtol=1e-6)
        np.testing.assert_allclose(bias[channel], beta[channel] - mean[channel] * scale, rtol=1e-6,
                                   atol=1e-7)


def test_dtype_policy_is_kept(tiny_model_factory):
    reference = _with_random_statistics(tiny_model_factory("selfy_tsm_r18", num_frames=2))
    model = tiny_model_factory("selfy_tsm_r18", num_frames=2, dtype_policy="mixed_bfloat16")
    model.set_weights(reference.get_weights())
    folded = fold_batch_norms(model)
    assert folded.get_layer("layer1_0_conv1").compute_dtype == "bfloat16"
    assert folded.get_layer("layer1_0_bn1").dtype_policy.name == "mixed_bfloat16"
    assert all(variable.dtype == "float32" for variable in folded.weights)
    clip = _clip(2, 2, 32, seed=1)
    logits = folded(clip, training=False)
    assert logits.dtype == "float32"
    expected = np.asarray(reference(clip, training=False))
    assert np.abs(np.asarray(logits) - expected).max() < 0.05 * np.ptp(expected)


def test_folded_model_saves_and_loads(tiny_model_factory, tmp_path):
    folded = fold_batch_norms(_with_random_statistics(tiny_model_factory("selfy_tsm_r18", num_frames=2)))
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.get_layer("bn1"), FoldedBatchNorm)
    clip = _clip(1, 2, 32, seed=2)
    np.testing.assert_array_equal(np.asarray(loaded(clip)), np.asarray(folded(clip)))


def test_folded_model_refuses_training(tiny_model_factory):
    folded = fold_batch_norms(tiny_model_factory("tsn_r18", num_frames=2))
    with pytest.raises(ValueError, match="`bn1` is a batch norm folded into the convolution"):
        folded(_clip(1, 2, 32), training=True)


def test_only_a_convolution_feeding_just_the_batch_norm_is_folded():
    inputs = keras.Input((8, 8, 3))
    shared = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="shared")(inputs)
    left = keras.layers.BatchNormalization(name="left_bn")(shared)
    alone = keras.layers.Conv2D(4, 1, use_bias=False, name="alone")(inputs)
    right = keras.layers.BatchNormalization(name="right_bn")(alone)
    model = _with_random_statistics(keras.Model(inputs, [left + shared, right]))
    folded = fold_batch_norms(model)
    assert isinstance(folded.get_layer("left_bn"), keras.layers.BatchNormalization)
    assert isinstance(folded.get_layer("right_bn"), FoldedBatchNorm)
    images = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    for mine, theirs in zip(folded(images), model(images, training=False)):
        np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-5, atol=1e-5)


def test_needs_a_functional_model():
    sequential = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="`fold_batch_norms` needs a functional Keras model"):
        fold_batch_norms(sequential)
    with pytest.raises(ValueError, match="Received: int"):
        fold_batch_norms(3)
