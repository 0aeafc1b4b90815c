"""Convolution gradients computed with forward convolutions (TensorFlow, CPU).

`selfy_tf.ops._conv_gradient.conv2d` and the zoo's `Conv2D` layer are
checked against a brute-force NumPy convolution and its gradients, and the
models' training gradients against TensorFlow's own gradient kernels.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow", reason="a TensorFlow-only gradient path"
)
tf = pytest.importorskip("tensorflow")

from selfy_tf.layers import Conv2D  # noqa: E402
from selfy_tf.models import create_model  # noqa: E402
from selfy_tf.ops import _conv_gradient  # noqa: E402


def _numpy_pads(padding, size, kernel, stride):
    """TensorFlow's `(before, after)` zero padding of one axis, written out."""
    if padding == "VALID":
        return 0, 0
    if padding == "SAME":
        out = -(-size // stride)
        total = max((out - 1) * stride + kernel - size, 0)
        return total // 2, total - total // 2
    return padding, padding


def _numpy_conv_and_gradients(x, w, dy_seed, stride, padding):
    """Forward, input gradient and kernel gradient of a convolution, by definition."""
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (bh, ah), (bw, aw) = _numpy_pads(padding, h, kh, stride), _numpy_pads(padding, wd, kw, stride)
    xp = np.zeros((n, h + bh + ah, wd + bw + aw, c))
    xp[:, bh : bh + h, bw : bw + wd] = x
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((n, oh, ow, f))
    for oy in range(oh):
        for ox in range(ow):
            patch = xp[:, oy * stride : oy * stride + kh, ox * stride : ox * stride + kw]
            y[:, oy, ox] = np.einsum("nyxc,yxcf->nf", patch, w)
    dy = np.random.default_rng(dy_seed).standard_normal(y.shape)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for oy in range(oh):
        for ox in range(ow):
            rows, cols = slice(oy * stride, oy * stride + kh), slice(ox * stride, ox * stride + kw)
            dxp[:, rows, cols] += np.einsum("nf,yxcf->nyxc", dy[:, oy, ox], w)
            dw += np.einsum("nyxc,nf->yxcf", xp[:, rows, cols], dy[:, oy, ox])
    return y, dy, dxp[:, bh : bh + h, bw : bw + wd], dw


# (height, width, kernel, stride, padding): the backbones' and the block's
# geometries, odd and even sizes, and a stride that leaves rows unread.
CASES = [
    (7, 7, 3, 1, "SAME"),
    (6, 5, 1, 1, "SAME"),
    (6, 6, 3, 1, "VALID"),
    (5, 5, 3, 1, 1),
    (8, 8, 1, 2, "VALID"),
    (7, 7, 1, 2, "VALID"),
    (9, 9, 3, 2, 1),
    (9, 8, 3, 2, "VALID"),
    (8, 8, 3, 2, "SAME"),
    (12, 12, 7, 2, 3),
    (10, 10, 3, 3, "SAME"),
    (9, 9, 3, 2, "SAME"),
]


@pytest.mark.parametrize("height,width,kernel,stride,padding", CASES)
def test_gradients_equal_the_definition(height, width, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, height, width, 3))
    w = rng.standard_normal((kernel, kernel, 3, 4))
    y_ref, dy, dx_ref, dw_ref = _numpy_conv_and_gradients(x, w, 1, stride, padding)
    inputs, kernel_tensor = tf.constant(x, tf.float32), tf.constant(w, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([inputs, kernel_tensor])
        y = _conv_gradient.conv2d(inputs, kernel_tensor, stride, padding)
    dx, dw = tape.gradient(y, [inputs, kernel_tensor], output_gradients=tf.constant(dy, tf.float32))
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_gradients_inside_a_graph_function_equal_eager_ones():
    rng = np.random.default_rng(2)
    inputs = tf.constant(rng.standard_normal((3, 9, 9, 5)), tf.float32)
    kernel = tf.constant(rng.standard_normal((3, 3, 5, 6)), tf.float32)

    def gradients(inputs, kernel):
        with tf.GradientTape() as tape:
            tape.watch([inputs, kernel])
            loss = tf.reduce_sum(tf.sin(_conv_gradient.conv2d(inputs, kernel, 2, 1)))
        return tape.gradient(loss, [inputs, kernel])

    eager = gradients(inputs, kernel)
    graph = tf.function(gradients)(inputs, kernel)
    for a, b in zip(eager, graph):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_supports_large_or_wide_convolutions_only():
    def supports(input_shape, kernel_shape, strides=1, padding="SAME"):
        return _conv_gradient.supports(tf.zeros(input_shape), tf.zeros(kernel_shape), strides, padding)

    # Stride 1: from 2^20 multiply-adds per example.
    assert supports((1, 28, 28, 16), (3, 3, 16, 16))
    assert supports((1, 56, 56, 64), (1, 1, 64, 256))
    assert not supports((1, 7, 7, 16), (3, 3, 16, 16))
    assert not supports((1, 14, 14, 64), (1, 1, 64, 64))
    # Strided: from 2^16 input x output channels.
    assert supports((1, 14, 14, 256), (1, 1, 256, 512), 2, "VALID")
    assert not supports((1, 56, 56, 64), (1, 1, 64, 128), 2, "VALID")
    assert not supports((1, 9, 9, 4), (3, 3, 4, 16), 2, 1)
    # Paddings the flipped kernel cannot undo, unequal strides, unknown sizes.
    assert not supports((1, 28, 28, 16), (3, 3, 16, 16), 1, 3)
    assert not supports((1, 28, 28, 16), (3, 3, 16, 16), (1, 2))
    assert not _conv_gradient.supports(
        keras.KerasTensor((None, None, 28, 16)), tf.zeros((3, 3, 16, 16)), 1, "SAME"
    )


@pytest.mark.parametrize("strides,padding,use_bias", [(1, "same", False), (2, "valid", True)])
def test_conv2d_layer_training_gradients_equal_keras_conv2d(strides, padding, use_bias, monkeypatch):
    rng = np.random.default_rng(3)
    x = tf.constant(rng.standard_normal((2, 9, 9, 4)), tf.float32)
    monkeypatch.setattr(_conv_gradient, "MIN_MULTIPLY_ADDS_PER_EXAMPLE", 0)
    monkeypatch.setattr(_conv_gradient, "MIN_CHANNEL_PRODUCT", 0)
    args = dict(filters=6, kernel_size=3, strides=strides, padding=padding, use_bias=use_bias, activation="relu")
    ours, reference = Conv2D(**args), keras.layers.Conv2D(**args)
    ours.build(x.shape)
    reference.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype("float32") for w in reference.get_weights()]
    ours.set_weights(weights)
    reference.set_weights(weights)

    def gradients(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * tf.cos(y))
        return [y, *tape.gradient(loss, [x, *layer.trainable_variables])]

    for got, want in zip(gradients(ours), gradients(reference)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    # Inference is Keras's own convolution, and the layer round-trips its config.
    np.testing.assert_array_equal(ours(x).numpy(), reference(x).numpy())
    clone = Conv2D.from_config(ours.get_config())
    assert type(clone) is Conv2D and clone.get_config() == ours.get_config()


def test_the_inference_graph_holds_no_custom_gradient(monkeypatch):
    monkeypatch.setattr(_conv_gradient, "MIN_MULTIPLY_ADDS_PER_EXAMPLE", 0)
    layer = Conv2D(4, 3, padding="same", use_bias=False)
    x = tf.zeros((1, 8, 8, 3))
    layer.build(x.shape)

    def op_types(training):
        graph = tf.function(lambda x: layer(x, training=training)).get_concrete_function(x).graph
        return {op.type for op in graph.get_operations()}

    assert "IdentityN" not in op_types(False)
    assert "IdentityN" in op_types(True)


def test_model_training_gradients_equal_tensorflows_own(monkeypatch):
    """The whole SELFY model: backbone Conv2D layers and the block's convolutions.

    The size thresholds are lifted so that every convolution of the tiny
    model takes the forward-convolution gradients.
    """
    monkeypatch.setattr(_conv_gradient, "MIN_MULTIPLY_ADDS_PER_EXAMPLE", 0)
    monkeypatch.setattr(_conv_gradient, "MIN_CHANNEL_PRODUCT", 0)
    model = create_model("selfy_tsm_r18.tiny", num_classes=3)
    clips = tf.constant(
        np.random.default_rng(4).integers(0, 256, (2, *model.input_shape[1:]), dtype=np.uint8)
    )

    def gradients():
        with tf.GradientTape() as tape:
            logits = model(clips, training=True)
            loss = tf.reduce_sum(logits * tf.range(3, dtype=logits.dtype))
        return tape.gradient(loss, model.trainable_variables)

    ours = gradients()
    monkeypatch.setattr(_conv_gradient, "supports", lambda *args: False)
    tensorflows = gradients()
    assert any(isinstance(layer, Conv2D) for layer in model.layers)
    for variable, got, want in zip(model.trainable_variables, ours, tensorflows):
        scale = float(tf.reduce_max(tf.abs(want))) or 1.0
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-5 * scale, err_msg=variable.path)


def test_mixed_precision_training_gradients_match_keras_conv2d(monkeypatch):
    monkeypatch.setattr(_conv_gradient, "MIN_MULTIPLY_ADDS_PER_EXAMPLE", 0)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.standard_normal((2, 9, 9, 4)), tf.float32)
    args = dict(filters=8, kernel_size=3, padding="same", dtype="mixed_bfloat16")
    ours, reference = Conv2D(**args), keras.layers.Conv2D(**args)
    ours.build(x.shape)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    results = []
    for layer in (ours, reference):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
        results.append((y, tape.gradient(loss, [x, *layer.trainable_variables])))
    (y, grads), (y_reference, grads_reference) = results
    assert y.dtype == tf.bfloat16
    np.testing.assert_array_equal(y.numpy(), y_reference.numpy())
    for got, want in zip(grads, grads_reference):
        assert got.dtype == want.dtype == tf.float32
        # bfloat16 keeps 8 bits of mantissa: the summation order shows at 2^-8.
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=2e-2 * float(tf.reduce_max(tf.abs(want))))
