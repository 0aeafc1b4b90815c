"""Tests of the STSS op against a plain-loop NumPy reference (DESIGN.md §2)."""

from __future__ import annotations

import contextlib
import itertools
import sys

import keras
import numpy as np
import pytest
from keras import ops

from selfy_tf.ops import STSS_BACKENDS, _stss_plan, stss

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


def _float64_available(dtype: str) -> contextlib.AbstractContextManager:
    """Where `dtype` is float64 on JAX: a context with `jax_enable_x64` on.

    JAX computes in at most 32 bits unless `jax_enable_x64` is set, and
    casting to float64 then gives float32 (with a warning only).
    """
    if dtype != "float64" or keras.config.backend() != "jax":
        return contextlib.nullcontext()
    import jax

    if not hasattr(jax, "enable_x64"):
        pytest.skip(
            f"JAX {jax.__version__} has no `jax.enable_x64` context: float64 needs "
            "jax_enable_x64 (JAX_ENABLE_X64=1) set before JAX starts"
        )
    return jax.enable_x64(True)


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
        monkeypatch.setattr(stss_module, "choose_tiles", lambda *args: tile)

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
        with _float64_available(dtype):
            features = ops.cast(random_features((1, 3, 4, 4, 8), seed=6), dtype)
            # JAX would silently make it float32 without jax_enable_x64.
            assert keras.backend.standardize_dtype(features.dtype) == dtype
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


# (num_frames, height, width, window, tile) for the "matmul" plan: overlapping
# tiles, one tile over the whole map, T < L, a single frame, a window larger
# than the map, U != V.
PLAN_CASES = [
    (4, 5, 7, (3, 3, 5), (2, 3)),
    (3, 4, 5, (5, 3, 3), (4, 5)),
    (1, 3, 3, (5, 3, 3), (2, 2)),
    (2, 6, 6, (3, 9, 9), (3, 3)),
    (5, 6, 4, (3, 5, 1), (4, 2)),
]


def brute_force_pairs(num_frames: int, max_offset: int) -> list[tuple[int, int]]:
    """Frame pairs `(t, t + d)`, `0 <= d <= max_offset`, offset-major."""
    pairs = [
        (frame, other)
        for frame, other in itertools.product(range(num_frames), repeat=2)
        if 0 <= other - frame <= max_offset
    ]
    return sorted(pairs, key=lambda pair: (pair[1] - pair[0], pair[0]))


def plan_tables(num_frames, height, width, window, tile):
    """The tiling, the tile table and the band table of one plan case."""
    max_offset = min(window[0] // 2, num_frames - 1)
    tiling = _stss_plan._tiling(height, width, window, tile)
    query_positions, key_positions, query_owner = _stss_plan._tile_table(
        tiling, height, width
    )
    band_index = _stss_plan._band_table(
        _stss_plan._window_comparisons(num_frames, height, width, window),
        num_frames * height * width * int(np.prod(window)),
        _stss_plan._pair_table(num_frames, max_offset),
        tiling,
    )
    return tiling, query_positions, key_positions, query_owner, band_index


class TestMatmulPlan:
    """The "matmul" backend's index tables against brute-force definitions."""

    @pytest.mark.parametrize("num_frames,max_offset", [(1, 0), (4, 2), (5, 4), (8, 2)])
    def test_pair_table_numbers_each_forward_pair_once(self, num_frames, max_offset):
        table = _stss_plan._pair_table(num_frames, max_offset)
        expected = np.full((num_frames, max_offset + 1), -1)
        pairs = brute_force_pairs(num_frames, max_offset)
        for index, (frame, other) in enumerate(pairs):
            expected[frame, other - frame] = index
        np.testing.assert_array_equal(table, expected)

    @pytest.mark.parametrize("num_frames,height,width,window,tile", PLAN_CASES)
    def test_tiles_cover_the_map_and_each_window(
        self, num_frames, height, width, window, tile
    ):
        tiling, query_positions, key_positions, query_owner, _ = plan_tables(
            num_frames, height, width, window, tile
        )
        queries = query_positions.reshape(tiling.num_tiles, -1)
        keys = key_positions.reshape(tiling.num_tiles, -1)
        assert set(queries.reshape(-1)) == set(range(height * width))
        # The owning slot holds the position itself.
        np.testing.assert_array_equal(
            queries.reshape(-1)[query_owner], np.arange(height * width)
        )
        half_u, half_v = window[1] // 2, window[2] // 2
        for tile_queries, tile_keys in zip(queries, keys):
            assert len(set(tile_queries)) == tile[0] * tile[1]
            assert len(set(tile_keys)) == len(tile_keys)
            assert np.all((tile_keys >= 0) & (tile_keys < height * width))
            for position in tile_queries:
                y, x = divmod(int(position), width)
                window_positions = {
                    other_y * width + other_x
                    for other_y in range(y - half_u, y + half_u + 1)
                    for other_x in range(x - half_v, x + half_v + 1)
                    if 0 <= other_y < height and 0 <= other_x < width
                }
                assert window_positions <= set(tile_keys)

    @pytest.mark.parametrize("num_frames,height,width,window,tile", PLAN_CASES)
    def test_band_table_reads_the_compared_pair(
        self, num_frames, height, width, window, tile
    ):
        tiling, query_positions, key_positions, query_owner, band_index = plan_tables(
            num_frames, height, width, window, tile
        )
        pairs = brute_force_pairs(num_frames, min(window[0] // 2, num_frames - 1))
        # Similarities are laid out [pair, tile, tile_queries, tile_keys].
        pair_size = tiling.num_tiles * tiling.tile_queries * tiling.tile_keys
        band = band_index.reshape(num_frames, height, width, *window)
        length, height_window, width_window = window
        for t, y, x, l, u, v in np.ndindex(band.shape):
            other = (
                t + l - length // 2,
                y + u - height_window // 2,
                x + v - width_window // 2,
            )
            if not (
                0 <= other[0] < num_frames
                and 0 <= other[1] < height
                and 0 <= other[2] < width
            ):
                assert band[t, y, x, l, u, v] == -1
                continue
            # Only pairs (t, t + d), d >= 0, are computed: for d < 0 the
            # displaced position is the query.
            query, key = ((t, y, x), other) if other[0] >= t else (other, (t, y, x))
            pair, rest = divmod(int(band[t, y, x, l, u, v]), pair_size)
            query_slot, key_slot = divmod(rest, tiling.tile_keys)
            tile_index = query_slot // tiling.tile_queries
            assert pairs[pair] == (query[0], key[0])
            assert query_positions[query_slot] == query[1] * width + query[2]
            assert query_owner[query[1] * width + query[2]] == query_slot
            assert (
                key_positions[tile_index * tiling.tile_keys + key_slot]
                == key[1] * width + key[2]
            )

    @pytest.mark.parametrize("num_frames,height,width,window,tile", PLAN_CASES)
    def test_reader_tables_list_every_reader(
        self, num_frames, height, width, window, tile
    ):
        *_, key_positions, _, band_index = plan_tables(
            num_frames, height, width, window, tile
        )
        num_similarities = int(band_index.max()) + 3  # two never read
        readers = _stss_plan._band_reader_table(band_index, num_similarities)
        for similarity in range(num_similarities):
            outputs = list(np.flatnonzero(band_index == similarity))
            assert len(outputs) <= 2
            assert list(readers[:, similarity]) == outputs + [-1] * (2 - len(outputs))
        key_readers = _stss_plan._key_reader_table(key_positions, height * width)
        counts = [np.count_nonzero(key_positions == p) for p in range(height * width)]
        assert key_readers.shape == (max(counts), height * width)
        for position in range(height * width):
            slots = list(np.flatnonzero(key_positions == position))
            expected = slots + [-1] * (len(key_readers) - len(slots))
            assert list(key_readers[:, position]) == expected

    @pytest.mark.parametrize("num_frames,height,width,window,tile", PLAN_CASES)
    def test_plan_gathers_give_the_reference_and_its_transpose(
        self, num_frames, height, width, window, tile
    ):
        # The op's steps in NumPy: tile gathers, pair products, band gather.
        plan = _stss_plan.matmul_plan(num_frames, height, width, window, tile)
        features = random_features((1, num_frames, height, width, 4), seed=11)
        frames = features[0].astype(np.float64).reshape(num_frames, height * width, 4)
        frames /= np.sqrt(np.sum(frames**2, axis=-1, keepdims=True) + 1e-6)
        whole_map = np.arange(height * width)
        query_positions, key_positions = (
            whole_map if positions is None else positions
            for positions in (plan.query_positions, plan.key_positions)
        )
        queries = frames[:, query_positions].reshape(
            num_frames, plan.num_tiles, plan.tile_queries, 4
        )
        keys = frames[:, key_positions].reshape(
            num_frames, plan.num_tiles, plan.tile_keys, 4
        )
        similarities = np.concatenate(
            [
                np.einsum(
                    "tnqc,tnkc->tnqk", queries[: num_frames - offset], keys[offset:]
                ).reshape(-1)
                for offset in range(plan.max_offset + 1)
            ]
        )
        assert similarities.size == plan.num_similarities
        output = similarities[plan.band_index] * plan.band_mask
        np.testing.assert_allclose(
            output.reshape(1, num_frames, height, width, *window),
            reference_stss(features, window),
            atol=1e-12,
        )

        # The reader gathers sum the upstream of every output that reads a
        # similarity: the transpose of the band gather.
        upstream = np.random.default_rng(12).normal(size=plan.band_index.size)
        expected = np.zeros(plan.num_similarities)
        np.add.at(expected, plan.band_index, upstream * plan.band_mask)
        gradient = upstream[plan.first_reader] * plan.first_mask
        if plan.second_reader is not None:
            gradient += upstream[plan.second_reader] * plan.second_mask
        np.testing.assert_allclose(gradient, expected, atol=1e-12)
        if plan.key_readers is not None:
            key_upstream = np.random.default_rng(13).normal(size=key_positions.size)
            expected = np.zeros(height * width)
            np.add.at(expected, key_positions, key_upstream)
            gradient = sum(
                key_upstream[reader] * mask[:, 0]
                for reader, mask in zip(plan.key_readers, plan.key_reader_mask)
            )
            np.testing.assert_allclose(gradient, expected, atol=1e-12)


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
