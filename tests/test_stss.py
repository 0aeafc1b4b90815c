"""Tests of the STSS op against a plain-loop NumPy reference (DESIGN.md §2)."""

from __future__ import annotations

import itertools
import sys

import keras
import numpy as np
import pytest
from keras import ops

from selfy_tf.ops import STSS_BACKENDS, stss

ON_TENSORFLOW = keras.config.backend() == "tensorflow"
# "patches" is tf.image.extract_patches: TensorFlow only.
BACKENDS = STSS_BACKENDS if ON_TENSORFLOW else ("matmul", "shift")
tensorflow_only = pytest.mark.skipif(
    not ON_TENSORFLOW,
    reason="TensorFlow graphs, inner XLA or TFLite; the other backends' "
    "equivalents are in test_backends.py",
)
if ON_TENSORFLOW:
    import tensorflow as tf

stss_module = sys.modules["selfy_tf.ops.stss"]


def reference_stss(features: np.ndarray, window: tuple[int, int, int]) -> np.ndarray:
    """STSS by the definition, one output element at a time (float64)."""
    features = np.asarray(features, np.float64)
    batch, num_frames, height, width, _ = features.shape
    length, height_window, width_window = window
    normalized = features / np.sqrt(
        np.sum(features**2, axis=-1, keepdims=True) + 1e-6
    )
    output = np.zeros((batch, num_frames, height, width, *window))
    for b, t, y, x, l, u, v in itertools.product(
        range(batch),
        range(num_frames),
        range(height),
        range(width),
        range(length),
        range(height_window),
        range(width_window),
    ):
        other_t = t + l - length // 2
        other_y = y + u - height_window // 2
        other_x = x + v - width_window // 2
        if 0 <= other_t < num_frames and 0 <= other_y < height and 0 <= other_x < width:
            output[b, t, y, x, l, u, v] = np.dot(
                normalized[b, t, y, x], normalized[b, other_t, other_y, other_x]
            )
    return output


def random_features(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def gradient_of(loss, features):
    """The gradient of scalar `loss(features)` on the current Keras backend."""
    if ON_TENSORFLOW:
        features = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(features)
            value = loss(features)
        return tape.gradient(value, features)
    if keras.config.backend() == "jax":
        import jax

        return jax.grad(loss)(ops.convert_to_tensor(features))
    pytest.skip(f"gradients are tested on tensorflow and jax, not {keras.config.backend()}")


# (features shape, window): T < L, maps smaller than the window, U != V, ...
CASES = [
    ((2, 3, 4, 5, 3), (5, 3, 3)),  # T < L
    ((1, 4, 6, 7, 4), (3, 5, 7)),
    ((2, 2, 3, 3, 2), (1, 1, 1)),
    ((1, 3, 2, 3, 5), (3, 9, 9)),  # map smaller than the window
    ((1, 1, 3, 3, 2), (5, 3, 3)),  # a single frame
    ((1, 5, 5, 4, 3), (5, 3, 1)),  # U != V
]


@pytest.fixture
def forced_tiles(monkeypatch):
    """Forces the matmul backend's spatial query tile (overlapping tiles too)."""

    def force(tile):
        monkeypatch.setattr(stss_module, "_choose_tiles", lambda *args: tile)

    return force


class TestSTSSBasic:
    def test_backends_constant(self):
        assert STSS_BACKENDS == ("matmul", "shift", "patches")

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_output_shape_and_dtype(self, backend):
        output = stss(random_features((2, 3, 4, 5, 6)), (3, 3, 5), backend, jit=False)
        assert output.shape == (2, 3, 4, 5, 3, 3, 5)
        assert keras.backend.standardize_dtype(output.dtype) == "float32"

    def test_default_window(self):
        output = stss(random_features((1, 2, 3, 3, 4)))
        assert output.shape == (1, 2, 3, 3, 5, 9, 9)

    def test_keras_functional_dynamic_batch(self):
        inputs = keras.Input(shape=(3, 5, 5, 4))
        outputs = keras.layers.Lambda(
            lambda features: stss(features, (3, 3, 3)),
            output_shape=(3, 5, 5, 3, 3, 3),
        )(inputs)
        model = keras.Model(inputs, outputs)
        for batch in (1, 3):
            features = random_features((batch, 3, 5, 5, 4), seed=batch)
            output = model.predict(features, verbose=0)
            np.testing.assert_allclose(
                output, reference_stss(features, (3, 3, 3)), atol=1e-5
            )

    @tensorflow_only
    def test_graph_without_xla_when_jit_false(self):
        function = tf.function(lambda features: stss(features, (3, 3, 3), jit=False))
        graph = function.get_concrete_function(
            tf.TensorSpec([None, 3, 4, 4, 2])
        ).graph.as_graph_def()
        functions = [node for f in graph.library.function for node in f.node_def]
        for node in [*graph.node, *functions]:
            assert "_XlaMustCompile" not in node.attr or not node.attr[
                "_XlaMustCompile"
            ].b


class TestSTSSCorrectness:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("shape,window", CASES)
    def test_matches_reference(self, backend, shape, window):
        features = random_features(shape)
        output = stss(features, window, backend=backend, jit=False)
        np.testing.assert_allclose(
            np.asarray(output), reference_stss(features, window), atol=1e-5
        )

    @pytest.mark.parametrize("tile", [(2, 3), (3, 2), (1, 1), (4, 4)])
    def test_matmul_tiles_match_reference(self, forced_tiles, tile):
        # 5 x 7 is not a multiple of the tiles: the last ones overlap.
        forced_tiles(tile)
        features = random_features((2, 4, 5, 7, 3), seed=3)
        for jit in (False, True):
            output = stss(features, (3, 3, 5), jit=jit)
            np.testing.assert_allclose(
                np.asarray(output), reference_stss(features, (3, 3, 5)), atol=1e-5
            )

    def test_backends_agree(self):
        features = random_features((2, 4, 7, 8, 16), seed=4)
        outputs = [
            np.asarray(stss(features, (5, 5, 7), backend=backend, jit=False))
            for backend in BACKENDS
        ]
        for output in outputs[1:]:
            np.testing.assert_allclose(output, outputs[0], atol=1e-5)

    @pytest.mark.parametrize("backend", BACKENDS)
    @tensorflow_only
    def test_eager_function_and_xla(self, backend):
        # A small window keeps the XLA compilation of "shift" short.
        window = (3, 1, 3)
        features = random_features((2, 3, 4, 5, 3), seed=5)
        expected = reference_stss(features, window)
        runs = {
            "eager jit": stss(features, window, backend=backend, jit=True),
            "function": tf.function(
                lambda x: stss(x, window, backend=backend, jit=False)
            )(features),
            "function jit": tf.function(
                lambda x: stss(x, window, backend=backend, jit=True)
            )(features),
            "outer xla": tf.function(
                lambda x: stss(x, window, backend=backend, jit=False),
                jit_compile=True,
            )(features),
        }
        for name, output in runs.items():
            np.testing.assert_allclose(
                np.asarray(output), expected, atol=1e-5, err_msg=name
            )

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
    def test_other_float_dtypes(self, dtype):
        features = ops.cast(random_features((1, 3, 4, 4, 8), seed=6), dtype)
        output = stss(features, (3, 3, 3))
        assert keras.backend.standardize_dtype(output.dtype) == "float32"
        expected = reference_stss(np.asarray(ops.cast(features, "float32")), (3, 3, 3))
        np.testing.assert_allclose(np.asarray(output), expected, atol=1e-5)

    def test_float16_large_values_do_not_overflow(self):
        # The sum of squares of these features (8 * 300**2) exceeds float16.
        features = ops.full([1, 2, 3, 3, 8], 300.0, "float16")
        output = np.asarray(stss(features, (1, 1, 1)))
        np.testing.assert_allclose(output, np.ones_like(output), atol=1e-5)

    @pytest.mark.parametrize(
        "backend,jit",
        [("matmul", False), ("matmul", True), ("shift", False)]
        + ([("patches", False)] if ON_TENSORFLOW else []),
    )
    def test_gradient_matches_finite_differences(self, backend, jit, forced_tiles):
        if backend == "matmul":
            forced_tiles((2, 2))  # overlapping tiles on a 3 x 3 map
        shape, window = (1, 3, 3, 3, 2), (3, 3, 3)
        features = random_features(shape, seed=7)
        weights = np.random.default_rng(8).normal(size=shape[:4] + window)

        def loss(values):
            return np.sum(reference_stss(values, window) * weights)

        numeric = np.zeros(shape)
        step = 1e-4
        base = features.astype(np.float64)
        for index in np.ndindex(shape):
            plus, minus = base.copy(), base.copy()
            plus[index] += step
            minus[index] -= step
            numeric[index] = (loss(plus) - loss(minus)) / (2 * step)

        gradient = np.asarray(
            gradient_of(
                lambda values: ops.sum(
                    stss(values, window, backend=backend, jit=jit)
                    * weights.astype(np.float32)
                ),
                features,
            )
        )
        np.testing.assert_allclose(gradient, numeric, atol=2e-4, rtol=1e-3)

    def test_gradient_of_half_precision_input(self):
        features = ops.cast(random_features((1, 2, 3, 3, 4), seed=9), "bfloat16")
        gradient = gradient_of(lambda values: ops.sum(stss(values, (3, 3, 3))), features)
        assert keras.backend.standardize_dtype(gradient.dtype) == "bfloat16"
        assert np.all(np.isfinite(np.asarray(ops.cast(gradient, "float32"))))


class TestSTSSErrors:
    @pytest.mark.parametrize(
        "window", [(5, 8, 9), (5, 9), (0, 3, 3), (-1, 3, 3), (3.0, 3, 3), 5]
    )
    def test_bad_window(self, window):
        with pytest.raises(ValueError, match=r"`window` must be three odd positive"):
            stss(random_features((1, 2, 3, 3, 2)), window)

    def test_bad_window_message_suggests_fix(self):
        with pytest.raises(
            ValueError,
            match=r"Received: window=\(5, 8, 9\)\. Try window=\(5, 9, 9\)\.",
        ):
            stss(random_features((1, 2, 3, 3, 2)), (5, 8, 9))

    def test_unknown_backend(self):
        with pytest.raises(
            ValueError, match=r"`backend` must be one of \('matmul', 'shift', "
        ):
            stss(random_features((1, 2, 3, 3, 2)), (3, 3, 3), backend="conv")

    def test_bad_rank(self):
        with pytest.raises(
            ValueError, match=r"`features` must have rank 5.*\(2, 3, 3, 2\)"
        ):
            stss(random_features((2, 3, 3, 2)), (3, 3, 3))

    def test_integer_features(self):
        with pytest.raises(ValueError, match=r"floating-point.*int32"):
            stss(ops.ones([1, 2, 3, 3, 2], "int32"), (3, 3, 3))

    @tensorflow_only
    def test_dynamic_frames(self):
        function = tf.function(lambda features: stss(features, (3, 3, 3)))
        with pytest.raises(ValueError, match=r"static num_frames"):
            function.get_concrete_function(tf.TensorSpec([1, None, 3, 3, 2]))


@tensorflow_only
class TestSTSSTFLite:
    @pytest.mark.parametrize("tile", [None, (2, 3)])
    def test_matmul_backend_converts_to_builtins(self, forced_tiles, tile):
        from ai_edge_litert.interpreter import Interpreter

        if tile is not None:
            forced_tiles(tile)
        shape, window = (1, 3, 4, 5, 6), (3, 3, 5)
        function = tf.function(lambda features: stss(features, window, jit=False))
        concrete = function.get_concrete_function(tf.TensorSpec(shape, tf.float32))
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [concrete], function
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        model = converter.convert()

        interpreter = Interpreter(model_content=model)
        interpreter.allocate_tensors()
        features = random_features(shape, seed=10)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], features)
        interpreter.invoke()
        output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        np.testing.assert_allclose(output, reference_stss(features, window), atol=1e-5)
