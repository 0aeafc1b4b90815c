"""The core on every Keras backend: no TensorFlow import under JAX, TensorFlow
fast paths equal to the generic `keras.ops` paths, exact batch norm statistics,
weights that move between backends.

Run under each backend, e.g. `KERAS_BACKEND=jax python -m pytest tests/test_backends.py`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from selfy_tf.layers import SELFYBlock, TemporalShift
from selfy_tf.layers._batch_norm import FusedBatchNormalization
from selfy_tf.models import create_model
from selfy_tf.ops import _backend, stss_xla

BACKEND = keras.config.backend()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_JAX = importlib.util.find_spec("jax") is not None
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="compares a TensorFlow-only fast path with the generic keras.ops path",
)
NEEDS_JAX = pytest.mark.skipif(not HAVE_JAX, reason="jax is not installed")
# Tests that start their own JAX and TensorFlow subprocesses do the same
# whatever backend runs pytest: they run once, in the TensorFlow run.
SUBPROCESS_BACKENDS = pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="starts its own JAX and TensorFlow subprocesses: run by the TensorFlow run of this module",
)


# Importing without TensorFlow ------------------------------------------------

_BLOCK_TENSORFLOW = """
import sys

class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("tensorflow is blocked in this test")

sys.meta_path.insert(0, _NoTensorFlow())
"""


def _run_python(code: str, backend: str, timeout: float = 300) -> str:
    environment = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@NEEDS_JAX
@SUBPROCESS_BACKENDS
def test_core_imports_and_runs_under_jax_without_tensorflow():
    code = _BLOCK_TENSORFLOW + textwrap.dedent(
        """
        import json
        import numpy as np
        import selfy_tf, selfy_tf.runtime
        from selfy_tf import layers, ops, weights
        from selfy_tf.models import count_macs, create_model, fold_batch_norms

        model = create_model("selfy_tsm_r18", num_classes=3, num_frames=2,
                             input_size=32, width_multiplier=0.125, selfy_channels=16)
        clip = np.random.default_rng(0).uniform(0, 255, (1, 2, 32, 32, 3)).astype("float32")
        logits = np.asarray(model(clip, training=False))
        folded = np.asarray(fold_batch_norms(model)(clip, training=False))
        model(clip, training=True)
        print(json.dumps({
            "tensorflow_imported": "tensorflow" in sys.modules,
            "shape": list(logits.shape),
            "folded_error": float(np.abs(folded - logits).max()),
            "macs": count_macs(model),
        }))
        """
    )
    report = json.loads(_run_python(code, "jax").strip().splitlines()[-1])
    assert report["tensorflow_imported"] is False
    assert report["shape"] == [1, 3]
    assert report["folded_error"] < 1e-4
    assert report["macs"] > 0


def test_patches_backend_error_names_the_backend(monkeypatch):
    from selfy_tf.ops import stss

    monkeypatch.setattr(_backend, "is_tensorflow", lambda: False)
    with pytest.raises(ValueError, match="patches.*KERAS_BACKEND=tensorflow"):
        stss(np.ones((1, 2, 3, 3, 2), "float32"), (3, 3, 3), backend="patches")


# TensorFlow fast paths against the generic paths -----------------------------


def _generic(monkeypatch):
    """Makes the package take its generic keras.ops paths on TensorFlow too."""
    monkeypatch.setattr(_backend, "is_tensorflow", lambda: False)


@tensorflow_only
@pytest.mark.parametrize("training", [False, True])
def test_selfy_block_fast_paths_match_generic_paths(monkeypatch, training, value_and_gradients):
    # Inner XLA gathers, explicit-padding convolutions, BiasAdd, the fused
    # inference batch norm and the banded conv0/conv1 at inference.
    keras.utils.set_random_seed(4)
    block = SELFYBlock(
        num_frames=2,
        hidden_channels=8,
        window=(3, 9, 9),
        extraction_channels=(2, 4, 8, 8),
        integration_channels=(8, 8, 8, 8),
        zero_init_last=False,
    )
    inputs = np.random.default_rng(5).normal(size=(4, 8, 8, 16)).astype("float32")
    block.build(inputs.shape)
    # Non-trivial moving statistics so that the inference paths differ from identity.
    for index, variable in enumerate(block.non_trainable_variables):
        rng = np.random.default_rng(index)
        variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype("float32"))
    variables = block.trainable_variables
    with stss_xla(True):
        fast, fast_grads = value_and_gradients(
            lambda x: block(x, training=training), inputs, variables
        )
    _generic(monkeypatch)
    generic, generic_grads = value_and_gradients(
        lambda x: block(x, training=training), inputs, variables
    )
    np.testing.assert_allclose(fast, generic, rtol=1e-5, atol=1e-5)
    for fast_grad, generic_grad in zip(fast_grads, generic_grads):
        scale = max(np.abs(generic_grad).max(), 1e-6)
        assert np.abs(fast_grad - generic_grad).max() <= 1e-4 * scale


@tensorflow_only
def test_temporal_shift_custom_gradient_matches_autodiff(monkeypatch, value_and_gradients):
    layer = TemporalShift(num_frames=3, fold_div=4)
    inputs = np.random.default_rng(6).normal(size=(6, 2, 2, 8)).astype("float32")
    fast, (fast_grad,) = value_and_gradients(layer, inputs)
    _generic(monkeypatch)
    generic, (generic_grad,) = value_and_gradients(layer, inputs)
    np.testing.assert_array_equal(fast, generic)
    np.testing.assert_array_equal(fast_grad, generic_grad)


# Exact training-mode batch norm ----------------------------------------------


def _batch_norm_reference(inputs: np.ndarray, weights: np.ndarray, epsilon: float):
    """Float64 output and input gradient of a training-mode batch norm (gamma 1, beta 0)."""
    channels = inputs.shape[-1]
    rows = inputs.reshape(-1, channels).astype(np.float64)
    upstream = weights.reshape(-1, channels).astype(np.float64)
    mean = rows.mean(axis=0)
    variance = rows.var(axis=0)
    normalized = (rows - mean) / np.sqrt(variance + epsilon)
    gradient = (
        upstream
        - upstream.mean(axis=0)
        - normalized * (upstream * normalized).mean(axis=0)
    ) / np.sqrt(variance + epsilon)
    return normalized, gradient, rows.mean(axis=0), rows.var(axis=0, ddof=1)


# Scale and offset of the three-channel training cases below.
_GAMMA, _BETA = np.array([0.5, 2.0, -1.0]), np.array([1.0, 0.0, 3.0])


def _train_affine_batch_norm(layer, inputs: np.ndarray, value_and_gradients):
    """Builds `layer` for `inputs` with gamma `_GAMMA` and beta `_BETA` and runs it in
    training mode: `(output rows, (input, gamma, beta gradients), upstream rows)`,
    the upstream gradient being `value_and_gradients`' fixed weights."""
    layer.build(inputs.shape)
    layer.gamma.assign(_GAMMA.astype("float32"))
    layer.beta.assign(_BETA.astype("float32"))
    output, gradients = value_and_gradients(
        lambda x: layer(x, training=True), inputs, [layer.gamma, layer.beta]
    )
    weights = np.random.default_rng(99).normal(size=inputs.shape).reshape(-1, 3)
    return output.reshape(-1, 3), gradients, weights


# On TensorFlow the fused-kernel path and the generic keras.ops path.
BATCH_NORM_PATHS = ["fast", "generic"] if keras.config.backend() == "tensorflow" else ["generic"]


@pytest.mark.parametrize("path", BATCH_NORM_PATHS)
@pytest.mark.parametrize(
    "shape,mean,std",
    [
        ((2_000, 1_000, 2), 100.0, 1.0),  # 2 M elements per channel, mean/std 100
        ((1_271, 1_000, 2), -30.0, 0.3),  # 1.27 M: not a multiple of the sum block
        ((7, 3, 5, 3), 5.0, 2.0),  # rank 4, fewer rows than one block
    ],
)
def test_training_batch_norm_matches_float64(
    monkeypatch, path, shape, mean, std, value_and_gradients
):
    if path == "generic":
        _generic(monkeypatch)
    rng = np.random.default_rng(8)
    inputs = (mean + std * rng.normal(size=shape)).astype("float32")
    layer = FusedBatchNormalization(momentum=0.0, epsilon=1e-5)
    layer.build(shape)
    output, (gradient, gamma_gradient, beta_gradient) = value_and_gradients(
        lambda x: layer(x, training=True), inputs, [layer.gamma, layer.beta]
    )
    weights = np.random.default_rng(99).normal(size=shape).astype("float32")
    expected, expected_gradient, batch_mean, unbiased = _batch_norm_reference(
        inputs, weights, 1e-5
    )
    channels = shape[-1]
    output = output.reshape(-1, channels)
    gradient = gradient.reshape(-1, channels)
    assert np.abs(output - expected).max() <= 1e-5 * np.abs(expected).max()
    assert np.abs(gradient - expected_gradient).max() <= 1e-5 * np.abs(expected_gradient).max()
    weights = weights.reshape(-1, channels).astype(np.float64)
    np.testing.assert_allclose(gamma_gradient, (weights * expected).sum(0), rtol=1e-5)
    np.testing.assert_allclose(beta_gradient, weights.sum(0), rtol=1e-5)
    # momentum 0: the moving statistics are those of the last batch.
    np.testing.assert_allclose(np.asarray(layer.moving_mean), batch_mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), unbiased, rtol=1e-5)


@pytest.mark.parametrize("shape", [(6, 5, 5, 3), (40, 7, 3)])
def test_tensorflow_training_statistics_match_float64(shape, value_and_gradients):
    # TensorFlow's fused training kernel (exact sums on other backends) on a
    # small, well-conditioned tensor: mean/std 2, a few hundred rows.
    rng = np.random.default_rng(12)
    inputs = (2.0 + rng.normal(size=shape)).astype("float32")
    layer = FusedBatchNormalization(training_statistics="tensorflow", momentum=0.0, epsilon=1e-5)
    output, (gradient, gamma_gradient, beta_gradient), weights = _train_affine_batch_norm(
        layer, inputs, value_and_gradients
    )
    normalized, unit_gradient, batch_mean, unbiased = _batch_norm_reference(inputs, weights * _GAMMA, 1e-5)
    np.testing.assert_allclose(output, normalized * _GAMMA + _BETA, atol=1e-5)
    np.testing.assert_allclose(gradient.reshape(-1, 3), unit_gradient, atol=1e-5 * np.abs(unit_gradient).max())
    np.testing.assert_allclose(gamma_gradient, (weights * normalized).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(beta_gradient, weights.sum(0), rtol=1e-5, atol=1e-5)
    # PyTorch's moving statistics: the unbiased batch variance.
    np.testing.assert_allclose(np.asarray(layer.moving_mean), batch_mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.moving_variance), unbiased, rtol=1e-5)


@tensorflow_only
def test_tensorflow_training_statistics_run_the_fused_training_kernel():
    import tensorflow as tf

    def op_types(statistics: str, synchronized: bool = False) -> set:
        layer = FusedBatchNormalization(training_statistics=statistics, synchronized=synchronized)
        layer.build((4, 3, 3, 2))
        function = tf.function(lambda x: layer(x, training=True))
        graph = function.get_concrete_function(tf.TensorSpec((4, 3, 3, 2), tf.float32)).graph
        training = {
            op.type for op in graph.get_operations()
            if op.type.startswith("FusedBatchNorm") and op.get_attr("is_training")
        }
        return training | {op.type for op in graph.get_operations() if op.type in ("MatMul", "BatchMatMulV2")}

    assert op_types("tensorflow") == {"FusedBatchNormV3"}
    # Exact statistics: block sums as matrix products, no training-mode kernel.
    assert "FusedBatchNormV3" not in op_types("exact")
    # Synchronized with one replica: nothing to all-reduce, the kernel runs.
    assert op_types("tensorflow", synchronized=True) == {"FusedBatchNormV3"}


def test_tensorflow_training_statistics_mixed_precision():
    shape = (4, 3, 3, 2)
    inputs = (1.0 + np.random.default_rng(13).normal(size=shape)).astype("float32")
    layer = FusedBatchNormalization(training_statistics="tensorflow", dtype="mixed_float16", epsilon=1e-5)
    outputs = layer(keras.ops.cast(inputs, "float16"), training=True)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    assert layer.moving_mean.dtype == "float32"
    rows = inputs.reshape(-1, 2).astype(np.float64)
    expected = (rows - rows.mean(0)) / np.sqrt(rows.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(outputs, np.float32).reshape(-1, 2), expected, atol=1e-2)


def test_training_batch_norm_scale_and_offset_gradients(value_and_gradients):
    shape = (300, 7, 3)
    rng = np.random.default_rng(10)
    inputs = (50 + rng.normal(size=shape)).astype("float32")
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-3)
    output, (_, gamma_grad, beta_grad), weights = _train_affine_batch_norm(layer, inputs, value_and_gradients)
    normalized, _, _, _ = _batch_norm_reference(inputs, weights, 1e-3)
    np.testing.assert_allclose(output, normalized * _GAMMA + _BETA, atol=1e-5)
    np.testing.assert_allclose(gamma_grad, (weights * normalized).sum(0), rtol=1e-5)
    np.testing.assert_allclose(beta_grad, weights.sum(0), rtol=1e-5)


def test_inference_batch_norm_is_the_moving_affine_map():
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build((2, 5, 3))
    layer.moving_mean.assign(np.array([1.0, -2.0, 0.5], "float32"))
    layer.moving_variance.assign(np.array([4.0, 0.25, 1.0], "float32"))
    layer.gamma.assign(np.array([2.0, 1.0, -1.0], "float32"))
    inputs = np.random.default_rng(11).normal(size=(2, 5, 3)).astype("float32")
    expected = (inputs - [1.0, -2.0, 0.5]) / np.sqrt(np.array([4.0, 0.25, 1.0]) + 1e-5)
    expected = expected * [2.0, 1.0, -1.0]
    np.testing.assert_allclose(np.asarray(layer(inputs, training=False)), expected, atol=1e-5)


# Weights across backends -----------------------------------------------------

def _tiny_model():
    return create_model(
        "selfy_tsm_r18", num_classes=3, num_frames=2, input_size=32,
        width_multiplier=0.125, selfy_channels=16,
    )


def save_and_check(folder: str, other: str | None) -> dict:
    """Loads `other`'s `.keras` and `.weights.h5` (if given) and compares their
    logits with the ones saved there; then saves a model with non-trivial
    weights, its files and its logits into `folder`. Returns the errors,
    relative to the largest logit (at least 1)."""
    clip = np.random.default_rng(0).uniform(0, 255, (2, 2, 32, 32, 3)).astype("float32")
    errors = {}
    if other is not None:
        expected = np.load(os.path.join(other, "logits.npy"))
        scale = max(float(np.abs(expected).max()), 1.0)
        loaded = keras.models.load_model(os.path.join(other, "model.keras"))
        errors["keras"] = float(
            np.abs(np.asarray(loaded(clip, training=False)) - expected).max() / scale
        )
        model = _tiny_model()
        model.load_weights(os.path.join(other, "model.weights.h5"))
        errors["weights_h5"] = float(
            np.abs(np.asarray(model(clip, training=False)) - expected).max() / scale
        )
    model = _tiny_model()
    rng = np.random.default_rng(3 if other is None else 4)
    for variable in model.weights:
        if "seed_generator" in variable.path:
            continue
        if "moving_variance" in variable.path or "gamma" in variable.path:
            # Non-trivial statistics; the last gammas away from zero.
            value = rng.uniform(0.5, 1.5, variable.shape)
        else:
            value = np.asarray(variable) + rng.normal(0, 0.05, variable.shape)
        variable.assign(value.astype(variable.dtype))
    model.save(os.path.join(folder, "model.keras"))
    model.save_weights(os.path.join(folder, "model.weights.h5"))
    np.save(os.path.join(folder, "logits.npy"), np.asarray(model(clip, training=False)))
    return errors


@NEEDS_JAX
@SUBPROCESS_BACKENDS
def test_weights_move_between_jax_and_tensorflow(tmp_path):
    other_backend = "tensorflow" if BACKEND == "jax" else "jax"
    here, there = tmp_path / BACKEND, tmp_path / other_backend
    here.mkdir()
    there.mkdir()
    # This process saves; the other backend loads both files and saves its
    # own; this process loads those.
    save_and_check(str(here), None)
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import test_backends; "
        f"print(json.dumps(test_backends.save_and_check({str(there)!r}, {str(here)!r})))"
    )
    errors_there = json.loads(_run_python(code, other_backend).strip().splitlines()[-1])
    (tmp_path / "again").mkdir()
    errors_here = save_and_check(str(tmp_path / "again"), str(there))
    for errors in (errors_there, errors_here):
        assert set(errors) == {"keras", "weights_h5"}
        assert max(errors.values()) <= 1e-5, errors
