"""Tests of selfy_tf.layers: shapes, configs, saving, XLA, mixed precision, numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

from selfy_tf.layers import (
    FramePreprocessing,
    SegmentConsensus,
    SELFYBlock,
    STSSExtraction,
    STSSIntegration,
    STSSTransformation,
    TemporalShift,
)
from selfy_tf.weights import selfy_block_mapping

ON_TENSORFLOW = keras.config.backend() == "tensorflow"
if ON_TENSORFLOW:
    import tensorflow as tf
tensorflow_only = pytest.mark.skipif(
    not ON_TENSORFLOW,
    reason="TensorFlow XLA / tf.distribute; the JAX equivalents (jax.jit of "
    "the whole step, global-batch statistics) need no separate path",
)

# Tiny block: 2 clips of 2 frames, 8x8x8 features, 4x4 STSS maps.
TINY_BLOCK_ARGS = dict(
    num_frames=2,
    hidden_channels=4,
    window=(3, 9, 9),
    extraction_channels=(2, 3, 4, 5),
    integration_channels=(3, 4, 5, 6),
)
TINY_INPUT_SHAPE = (4, 8, 8, 8)


def _tiny_layers():
    """(layer, input shape, expected output shape) for every layer class."""
    return [
        (TemporalShift(num_frames=2, fold_div=4), (4, 3, 3, 8), (4, 3, 3, 8)),
        (
            STSSTransformation(num_frames=2, hidden_channels=4, window=(3, 9, 9)),
            (4, 8, 6, 5),
            (2, 2, 4, 3, 3, 9, 9),
        ),
        (STSSExtraction(channels=(2, 3, 4, 5)), (1, 2, 2, 3, 3, 9, 9), (1, 2, 2, 3, 3, 5)),
        (
            STSSIntegration(output_channels=7, channels=(3, 4, 5, 6), zero_init_last=False),
            (1, 2, 3, 2, 3, 5),
            (2, 6, 4, 7),
        ),
        (SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False), TINY_INPUT_SHAPE, TINY_INPUT_SHAPE),
        (FramePreprocessing(num_frames=2), (2, 2, 4, 4, 3), (4, 4, 4, 3)),
        (SegmentConsensus(num_frames=2), (4, 5), (2, 5)),
    ]


def _set_modules(config: object, modules: dict[str, str]) -> int:
    """Writes, for each serialized class named in `modules`, its former module and
    registered name (`selfy>ClassName`) as older `.keras` files hold them; returns the count."""
    count = 0
    if isinstance(config, dict):
        if config.get("class_name") in modules and "module" in config:
            config["module"] = modules[config["class_name"]]
            config["registered_name"] = f"selfy>{config['class_name']}"
            count += 1
        for value in config.values():
            count += _set_modules(value, modules)
    elif isinstance(config, list):
        for value in config:
            count += _set_modules(value, modules)
    return count


def _randomize_batch_norms(layer: keras.layers.Layer, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        shape = tuple(variable.shape)
        if name == "moving_variance":
            variable.assign(rng.uniform(0.5, 2.0, shape).astype("float32"))
        elif name in ("moving_mean", "beta"):
            variable.assign(rng.normal(0.0, 0.2, shape).astype("float32"))
        elif name == "gamma":
            variable.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))


def _sync_batch_norms(layer: keras.layers.Layer) -> list[bool]:
    """`synchronized` of every batch norm inside `layer`."""
    return [
        sublayer.synchronized
        for sublayer in layer._flatten_layers(include_self=False, recursive=True)
        if isinstance(sublayer, keras.layers.BatchNormalization)
    ]


# A training step of a sync-BN block under MirroredStrategy on 2 logical CPUs
# (each replica sees half the batch) against one replica seeing the whole
# batch. Logical devices must be configured before TensorFlow initialises,
# hence a fresh process.
_MIRRORED_SYNC_BATCH_NORM_SCRIPT = textwrap.dedent(
    """
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    keras.utils.set_random_seed(0)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    from selfy_tf.layers import SELFYBlock

    args = dict(num_frames=2, hidden_channels=4, window=(3, 9, 9),
                extraction_channels=(2, 3, 4, 5), integration_channels=(3, 4, 5, 6),
                zero_init_last=False)
    rng = np.random.default_rng(0)
    inputs = rng.normal(1.0, 2.0, size=(8, 8, 8, 8)).astype("float32")
    loss_weights = rng.normal(size=inputs.shape).astype("float32")
    # The same layers on the whole batch: with one replica the synchronized
    # batch norm computes local statistics with the same formulas.
    whole = SELFYBlock(**args, sync_batchnorm=True)
    whole.build((None, 8, 8, 8))
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        synced = SELFYBlock(**args, sync_batchnorm=True)
        synced.build((None, 8, 8, 8))
        unsynced = SELFYBlock(**args)
        unsynced.build((None, 8, 8, 8))
    synced.set_weights(whole.get_weights())
    unsynced.set_weights(whole.get_weights())
    per_replica = len(inputs) // 2

    def split(array):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(
                array[context.replica_id_in_sync_group * per_replica:][:per_replica]
            )
        )

    # Eager replica functions: no tracing, and the all-reduces still run.
    def step(block, x, w):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(block(x, training=True) * w)
        return tape.gradient(loss, block.trainable_variables)

    gradients = strategy.run(step, args=(synced, split(inputs), split(loss_weights)))
    unsynced_gradients = strategy.run(step, args=(unsynced, split(inputs), split(loss_weights)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(whole(inputs, training=True) * loss_weights)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "moving": [v.numpy().tolist() for v in synced.non_trainable_variables],
        "whole_moving": [v.numpy().tolist() for v in whole.non_trainable_variables],
        "gradients": [strategy.reduce("SUM", g, axis=None).numpy().tolist() for g in gradients],
        "unsynced_gradients": [
            strategy.reduce("SUM", g, axis=None).numpy().tolist() for g in unsynced_gradients
        ],
        "whole_gradients": [
            g.numpy().tolist() for g in tape.gradient(loss, whole.trainable_variables)
        ],
        "inference": synced(inputs).numpy().tolist(),
        "weights": [w.tolist() for w in synced.get_weights()],
        "inputs": inputs.tolist(),
    }))
    """
)


class TestLayersBasic:
    @pytest.mark.parametrize("index", range(7))
    def test_shapes_config_and_saving(self, index, tmp_path):
        layer, input_shape, output_shape = _tiny_layers()[index]
        inputs = np.random.default_rng(index).uniform(-1, 1, input_shape).astype("float32")
        outputs = layer(inputs)
        assert tuple(outputs.shape) == output_shape
        assert tuple(layer.compute_output_shape(input_shape)) == output_shape
        _randomize_batch_norms(layer)
        expected = keras.ops.convert_to_numpy(layer(inputs))

        # Config round trip builds an equivalent layer.
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()

        # Functional model with a dynamic batch axis, saved and reloaded.
        symbolic = keras.Input(input_shape[1:])
        model = keras.Model(symbolic, layer(symbolic))
        assert model.output.shape[1:] == output_shape[1:]
        path = tmp_path / "layer.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded.layers[-1]) is type(layer)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(inputs)), expected)

    def test_keras_files_from_former_modules_load(self, tmp_path):
        """`.keras` files name each class's module: the classes moved, their files still load."""
        from selfy_tf.layers._batch_norm import FusedBatchNormalization

        former_modules = {
            "FramePreprocessing": "selfy_tf.models.frame_preprocessing",
            "SegmentConsensus": "selfy_tf.models.segment_consensus",
            "FusedBatchNormalization": "selfy_tf.layers._common",
        }
        for cls in (FramePreprocessing, SegmentConsensus, FusedBatchNormalization):
            assert keras.saving.get_registered_name(cls) == f"selfy>{cls.__name__}"
        clips = keras.Input((2, 4, 4, 3))
        frames = FramePreprocessing(num_frames=2)(clips)
        features = FusedBatchNormalization(name="bn")(keras.layers.Conv2D(5, 3)(frames))
        logits = SegmentConsensus(num_frames=2)(keras.layers.GlobalAveragePooling2D()(features))
        model = keras.Model(clips, logits)
        _randomize_batch_norms(model)
        inputs = np.random.default_rng(0).uniform(0, 255, (3, 2, 4, 4, 3)).astype("float32")
        expected = keras.ops.convert_to_numpy(model(inputs))

        saved, former = tmp_path / "model.keras", tmp_path / "former.keras"
        model.save(saved)
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(former, "w") as target:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    rewritten = _set_modules(config, former_modules)
                    assert rewritten == len(former_modules)
                    data = json.dumps(config).encode()
                target.writestr(item, data)
        loaded = keras.models.load_model(former)
        assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(inputs)), expected)

    def test_defaults_are_the_reference_setting(self):
        # The paper's block (DESIGN.md §3): 8 frames, d_hid 128, window (5, 9, 9).
        block = SELFYBlock().get_config()
        assert (block["num_frames"], block["hidden_channels"], tuple(block["window"])) == (8, 128, (5, 9, 9))
        assert tuple(block["extraction_channels"]) == (4, 16, 64, 64)
        assert tuple(block["integration_channels"]) == (64, 64, 64, 64)
        transformation = STSSTransformation(num_frames=8).get_config()
        assert (transformation["hidden_channels"], tuple(transformation["window"])) == (128, (5, 9, 9))
        assert tuple(STSSExtraction().get_config()["channels"]) == (4, 16, 64, 64)
        assert tuple(STSSIntegration(512).get_config()["channels"]) == (64, 64, 64, 64)

    def test_block_weight_count_reference(self):
        block = SELFYBlock(num_frames=8)
        block.build((16, 28, 28, 512))
        trainable = sum(int(np.prod(v.shape)) for v in block.trainable_weights)
        assert trainable == 966_284
        # gamma, beta trainable and two moving statistics per batch norm (10 BNs).
        assert len(block.trainable_weights) == 30
        assert len(block.non_trainable_weights) == 20

    def test_block_starts_as_identity(self):
        block = SELFYBlock(**TINY_BLOCK_ARGS)
        inputs = np.random.default_rng(0).normal(size=TINY_INPUT_SHAPE).astype("float32")
        for training in (False, True):
            outputs = keras.ops.convert_to_numpy(block(inputs, training=training))
            np.testing.assert_allclose(outputs, np.maximum(inputs, 0.0), atol=1e-6)
        assert block.get_config()["zero_init_last"] is True

    def test_block_training_step_updates_every_weight(self, value_and_gradients):
        block = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False)
        inputs = np.random.default_rng(1).normal(size=TINY_INPUT_SHAPE).astype("float32")
        block.build(TINY_INPUT_SHAPE)
        moving_before = [v.numpy().copy() for v in block.non_trainable_weights]
        _, gradients = value_and_gradients(
            lambda x: block(x, training=True), inputs, block.trainable_weights
        )
        for variable, gradient in zip(block.trainable_weights, gradients[1:]):
            assert gradient is not None, variable.path
            assert float(np.abs(gradient).max()) > 0.0, variable.path
        for before, variable in zip(moving_before, block.non_trainable_weights):
            assert not np.array_equal(before, variable.numpy()), variable.path

    def test_sync_batchnorm_config_round_trip(self):
        layers = [
            STSSTransformation(num_frames=2, hidden_channels=4, window=(3, 9, 9),
                               sync_batchnorm=True),
            STSSExtraction(channels=(2, 3, 4, 5), sync_batchnorm=True),
            STSSIntegration(output_channels=7, channels=(3, 4, 5, 6), sync_batchnorm=True),
            SELFYBlock(**TINY_BLOCK_ARGS, sync_batchnorm=True),
        ]
        for layer in layers:
            config = layer.get_config()
            assert config["sync_batchnorm"] is True
            clone = type(layer).from_config(config)
            assert clone.sync_batchnorm is True
            assert clone.get_config() == config
        block = layers[-1]
        block.build(TINY_INPUT_SHAPE)
        assert _sync_batch_norms(block) == [True] * 10
        plain = SELFYBlock(**TINY_BLOCK_ARGS)
        plain.build(TINY_INPUT_SHAPE)
        assert plain.get_config()["sync_batchnorm"] is False
        assert _sync_batch_norms(plain) == [False] * 10

    @tensorflow_only
    def test_block_under_xla(self):
        # One frame offset keeps the XLA compilation short.
        block = SELFYBlock(**{**TINY_BLOCK_ARGS, "window": (1, 9, 9)}, zero_init_last=False)
        inputs = tf.random.stateless_normal(TINY_INPUT_SHAPE, seed=(3, 4))
        block.build(TINY_INPUT_SHAPE)
        _randomize_batch_norms(block)
        expected = ops.convert_to_numpy(block(inputs))
        compiled = tf.function(lambda x: block(x, training=False), jit_compile=True)
        np.testing.assert_allclose(ops.convert_to_numpy(compiled(inputs)), expected, rtol=1e-4, atol=1e-4)

        @tf.function(jit_compile=True)
        def train_step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(block(x, training=True))
            return tape.gradient(loss, block.trainable_weights)

        assert all(g is not None for g in train_step(inputs))

    @pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
    def test_block_mixed_precision(self, policy):
        inputs = np.random.default_rng(5).uniform(size=TINY_INPUT_SHAPE).astype("float32")
        reference = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False)
        reference.build(TINY_INPUT_SHAPE)
        _randomize_batch_norms(reference)
        expected = ops.convert_to_numpy(reference(inputs))
        keras.config.set_dtype_policy(policy)
        block = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False)
        block.build(TINY_INPUT_SHAPE)
        block.set_weights(reference.get_weights())
        outputs = block(ops.cast(inputs, block.compute_dtype))
        assert keras.backend.standardize_dtype(outputs.dtype) == block.compute_dtype
        assert all(v.dtype == "float32" for v in block.weights)
        np.testing.assert_allclose(
            ops.convert_to_numpy(ops.cast(outputs, "float32")), expected, rtol=0.1, atol=0.1
        )


class TestLayersErrors:
    def test_block_odd_spatial_size(self):
        block = SELFYBlock(**TINY_BLOCK_ARGS)
        with pytest.raises(ValueError, match=r"even input height.*\(4, 7, 8, 8\)"):
            block.build((4, 7, 8, 8))

    def test_block_unknown_channels(self):
        with pytest.raises(ValueError, match=r"input_shape=\(None, 8, 8, None\)"):
            SELFYBlock(**TINY_BLOCK_ARGS).build((None, 8, 8, None))

    def test_batch_not_multiple_of_frames(self):
        with pytest.raises(ValueError, match=r"multiple of num_frames=2.*\(5, 8, 8, 8\)"):
            SELFYBlock(**TINY_BLOCK_ARGS).build((5, 8, 8, 8))
        with pytest.raises(ValueError, match=r"multiple of num_frames=4"):
            TemporalShift(num_frames=4).build((6, 3, 3, 8))

    def test_bad_window(self):
        with pytest.raises(ValueError, match=r"three odd integers.*window=\(5, 8, 9\)"):
            SELFYBlock(window=(5, 8, 9))
        with pytest.raises(ValueError, match=r"9 or 11.*window=\(5, 7, 7\)"):
            SELFYBlock(window=(5, 7, 7))
        with pytest.raises(ValueError, match=r"9 or 11.*\(1, 2, 2, 2, 3, 5, 5\)"):
            STSSExtraction().build((1, 2, 2, 2, 3, 5, 5))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="`num_frames` must be a positive integer"):
            TemporalShift(num_frames=0)
        with pytest.raises(ValueError, match="`fold_div` must be an integer >= 2"):
            TemporalShift(num_frames=8, fold_div=1)
        with pytest.raises(ValueError, match=r"`extraction_channels` must be 4 positive"):
            SELFYBlock(extraction_channels=(4, 16, 64))
        with pytest.raises(ValueError, match="`stss_backend` must be one of"):
            SELFYBlock(stss_backend="cuda")
        with pytest.raises(ValueError, match="`hidden_channels` must be a positive"):
            STSSTransformation(num_frames=8, hidden_channels=-1)
        with pytest.raises(ValueError, match="`output_channels` must be a positive"):
            STSSIntegration(output_channels=0)

    def test_bad_sync_batchnorm(self):
        from selfy_tf.layers._batch_norm import FusedBatchNormalization

        with pytest.raises(ValueError, match=r"`sync_batchnorm` must be a bool. Received: sync_batchnorm='yes'"):
            SELFYBlock(sync_batchnorm="yes")
        with pytest.raises(ValueError, match="`sync_batchnorm` must be a bool"):
            STSSExtraction(sync_batchnorm=1)
        with pytest.raises(ValueError, match="supports only axis=-1 without renorm"):
            FusedBatchNormalization(renorm=True, synchronized=True)

    def test_batch_norm_training_statistics_config(self):
        from selfy_tf.layers._batch_norm import FusedBatchNormalization

        layer = FusedBatchNormalization(training_statistics="tensorflow", epsilon=1e-5)
        config = layer.get_config()
        assert config["training_statistics"] == "tensorflow"
        assert FusedBatchNormalization.from_config(config).training_statistics == "tensorflow"
        # Configs saved before the argument existed: exact statistics.
        del config["training_statistics"]
        assert FusedBatchNormalization.from_config(config).training_statistics == "exact"
        block = SELFYBlock(batch_norm_statistics="tensorflow")
        assert SELFYBlock.from_config(block.get_config()).batch_norm_statistics == "tensorflow"
        with pytest.raises(ValueError, match=r"`training_statistics` must be one of \('exact', 'tensorflow'\). Received: training_statistics='fused'"):
            FusedBatchNormalization(training_statistics="fused")
        with pytest.raises(ValueError, match="`batch_norm_statistics` must be one of"):
            STSSExtraction(batch_norm_statistics="kernel")

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"\(batch \* num_frames, height, width, channels\)"):
            TemporalShift(num_frames=2).build((2, 3, 3))
        with pytest.raises(ValueError, match=r"\(batch, num_frames, height, width, L, channels\)"):
            STSSIntegration(output_channels=4).build((2, 3, 3, 4))


# ----------------------------------------------------------------------------
# Independent NumPy reference, written in the PyTorch layout (NCHW / NCDHW).


def _np_temporal_shift(x, num_frames, fold_div):
    clips = x.reshape(-1, num_frames, *x.shape[1:])
    out = np.zeros_like(clips)
    fold = x.shape[-1] // fold_div
    for t in range(num_frames):
        if t + 1 < num_frames:
            out[:, t, ..., :fold] = clips[:, t + 1, ..., :fold]
        if t > 0:
            out[:, t, ..., fold : 2 * fold] = clips[:, t - 1, ..., fold : 2 * fold]
        out[:, t, ..., 2 * fold :] = clips[:, t, ..., 2 * fold :]
    return out.reshape(x.shape)


def _np_conv3d(x, weight, stride, padding):
    """PyTorch Conv3d: x [N, I, D, H, W], weight [O, I, kd, kh, kw]."""
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    kernel = weight.shape[2:]
    out_size = [(x.shape[2 + i] - kernel[i]) // stride[i] + 1 for i in range(3)]
    out = np.zeros((x.shape[0], weight.shape[0], *out_size))
    for a in range(kernel[0]):
        for b in range(kernel[1]):
            for c in range(kernel[2]):
                patch = x[
                    :, :,
                    a : a + stride[0] * out_size[0] : stride[0],
                    b : b + stride[1] * out_size[1] : stride[1],
                    c : c + stride[2] * out_size[2] : stride[2],
                ]
                out += np.einsum("nidhw,oi->nodhw", patch, weight[:, :, a, b, c])
    return out


def _np_conv2d(x, weight, stride, padding):
    return _np_conv3d(x[:, :, None], weight[:, :, None], (1, stride, stride), (0, padding, padding))[:, :, 0]


def _np_batch_norm(x, stats, training):
    """Batch norm on axis 1; batch statistics (biased variance) when training."""
    gamma, beta, mean, variance = stats
    axes = tuple(i for i in range(x.ndim) if i != 1)
    if training:
        mean, variance = x.mean(axis=axes), x.var(axis=axes)
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + 1e-5) * gamma.reshape(
        shape
    ) + beta.reshape(shape)


def _np_stss(features, window):
    """features [B, T, H, W, C] -> [B, T, H, W, L, U, V], plain definition."""
    g = features / np.sqrt((features**2).sum(-1, keepdims=True) + 1e-6)
    batch, frames, height, width, _ = g.shape
    length, rows, cols = window
    out = np.zeros((batch, frames, height, width, length, rows, cols))
    for l in range(length):
        for u in range(rows):
            for v in range(cols):
                dt, dy, dx = l - length // 2, u - rows // 2, v - cols // 2
                for t in range(frames):
                    if not 0 <= t + dt < frames:
                        continue
                    for y in range(height):
                        if not 0 <= y + dy < height:
                            continue
                        for x in range(width):
                            if 0 <= x + dx < width:
                                out[:, t, y, x, l, u, v] = (
                                    g[:, t, y, x] * g[:, t + dt, y + dy, x + dx]
                                ).sum(-1)
    return out


def _np_selfy_block(x, weights, num_frames, window, training):
    """The reference module graph; x is [B*T, H, W, C] (channels-last)."""
    relu = lambda a: np.maximum(a, 0.0)
    p = "module.base_model.selfy."
    bn = lambda name: tuple(
        weights[f"{p}{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")
    )
    out = np.transpose(x, (0, 3, 1, 2)).astype(np.float64)
    out = _np_conv2d(out, weights[f"{p}stss_transformation.downsample.0.weight"], 2, 1)
    out = relu(_np_batch_norm(out, bn("stss_transformation.downsample.1"), training))
    bt, c, h, w = out.shape
    b = bt // num_frames
    clips = np.transpose(out.reshape(b, num_frames, c, h, w), (0, 1, 3, 4, 2))
    stss = _np_stss(clips, window)  # [b, t, h, w, L, U, V]
    length = window[0]
    vol = stss.reshape(b * num_frames * h * w, 1, *window)
    geometry = [((1, 1, 1), (0, 1, 1)), ((1, 2, 2), (0, 1, 1)), ((1, 2, 2), (0, 1, 1)), ((1, 1, 1), (0, 0, 0))]
    for i, (stride, padding) in enumerate(geometry):
        vol = _np_conv3d(vol, weights[f"{p}stss_extraction.conv{i}.0.weight"], stride, padding)
        vol = relu(_np_batch_norm(vol, bn(f"stss_extraction.conv{i}.1"), training))
    ch = vol.shape[1]
    # '(b t h w) c l 1 1 -> (b l) c t h w'
    vol = vol.reshape(b, num_frames, h, w, ch, length)
    vol = np.transpose(vol, (0, 5, 4, 1, 2, 3)).reshape(b * length, ch, num_frames, h, w)
    for i in range(3):
        vol = _np_conv3d(vol, weights[f"{p}stss_integration.conv{i}.0.weight"], (1, 1, 1), (0, 1, 1))
        vol = relu(_np_batch_norm(vol, bn(f"stss_integration.conv{i}.1"), training))
    ch = vol.shape[1]
    # '(b l) c t h w -> b (l c) t h w'
    vol = vol.reshape(b, length * ch, num_frames, h, w)
    vol = _np_conv3d(vol, weights[f"{p}stss_integration.conv3_fuse.1.weight"], (1, 1, 1), (0, 1, 1))
    vol = relu(_np_batch_norm(vol, bn("stss_integration.conv3_fuse.2"), training))
    # ConvTranspose3d kernel 1, stride (1, 2, 2), output_padding (0, 1, 1).
    up_weight = weights[f"{p}stss_integration.upsample.0.weight"]
    up = np.zeros((b, up_weight.shape[1], num_frames, 2 * h, 2 * w))
    up[:, :, :, ::2, ::2] = np.einsum("nidhw,io->nodhw", vol, up_weight[:, :, 0, 0, 0])
    up = _np_batch_norm(up, bn("stss_integration.upsample.1"), training)
    up = np.transpose(up, (0, 2, 3, 4, 1)).reshape(x.shape)
    return relu(x + up)


class TestLayersCorrectness:
    @pytest.mark.parametrize("synchronized", [False, True])
    @pytest.mark.parametrize("shape", [(6, 3, 2, 5), (40, 5)])
    def test_fused_batch_norm_matches_numpy(self, shape, synchronized):
        from selfy_tf.layers._batch_norm import FusedBatchNormalization

        x = np.random.default_rng(2).normal(1.0, 2.0, size=shape).astype("float32")
        layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized)
        layer.build(shape)
        layer.gamma.assign(np.full(5, 1.5, "float32"))
        layer.beta.assign(np.full(5, -0.5, "float32"))
        flat = x.reshape(-1, 5)
        mean, variance = flat.mean(0), flat.var(0)
        expected = (x - mean) / np.sqrt(variance + 1e-5) * 1.5 - 0.5
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=True)), expected, rtol=1e-4, atol=1e-4)
        # Moving statistics as PyTorch updates them: unbiased batch variance.
        np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
        unbiased = variance * len(flat) / (len(flat) - 1)
        np.testing.assert_allclose(
            layer.moving_variance.numpy(), 0.9 + 0.1 * unbiased, rtol=1e-4
        )
        inference = (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * unbiased + 1e-5) * 1.5 - 0.5
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), inference, rtol=1e-4, atol=1e-4)

    def test_temporal_shift_matches_numpy(self):
        x = np.random.default_rng(0).normal(size=(6, 2, 3, 17)).astype("float32")
        layer = TemporalShift(num_frames=3, fold_div=4)
        np.testing.assert_array_equal(ops.convert_to_numpy(layer(x)), _np_temporal_shift(x, 3, 4))
        # A hand-checked case: one clip of 2 frames, 8 channels, fold 1.
        x = np.arange(16, dtype="float32").reshape(2, 1, 1, 8)
        out = ops.convert_to_numpy(TemporalShift(num_frames=2)(x)).reshape(2, 8)
        np.testing.assert_array_equal(out[0], [8, 0, 2, 3, 4, 5, 6, 7])
        np.testing.assert_array_equal(out[1], [0, 1, 10, 11, 12, 13, 14, 15])

    def test_temporal_shift_gradient_is_the_opposite_shift(self, value_and_gradients):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(6, 2, 3, 16)).astype("float32")
        layer = TemporalShift(num_frames=3, fold_div=4)
        _, (gradient,) = value_and_gradients(layer, x, seed=3)
        upstream = np.random.default_rng(3).normal(size=x.shape).astype("float32")
        # Each output reads one input (or a zero), so each input's gradient
        # is the upstream value of the output that read it, by brute force.
        positions = np.arange(1, x.size + 1, dtype="float64").reshape(x.shape)
        shifted_index = _np_temporal_shift(positions, 3, 4)
        expected = np.zeros(x.size)
        for output_index, source in enumerate(shifted_index.reshape(-1)):
            if source:
                expected[int(source) - 1] += upstream.reshape(-1)[output_index]
        np.testing.assert_array_equal(gradient.reshape(-1), expected)

    @tensorflow_only
    def test_temporal_shift_dynamic_batch_under_xla(self):
        layer = TemporalShift(num_frames=2)
        x = np.random.default_rng(1).normal(size=(4, 3, 3, 16)).astype("float32")
        compiled = tf.function(
            layer, jit_compile=True, input_signature=[tf.TensorSpec((None, 3, 3, 16))]
        )
        np.testing.assert_array_equal(ops.convert_to_numpy(compiled(x)), _np_temporal_shift(x, 2, 8))

    @pytest.mark.parametrize("side", [9, 11])
    def test_extraction_inference_matches_numpy(self, side):
        # Inference computes conv0 + conv1 as banded matrix products: check
        # them (and the frozen-batch-norm training path, which takes the same
        # route) against plain convolutions, for both supported window sides.
        rng = np.random.default_rng(side)
        keras.utils.set_random_seed(side)  # the kernels too: the check below needs live units
        shape = (1, 2, 2, 2, 3, side, side)
        layer = STSSExtraction(channels=(2, 3, 4, 5))
        layer.build(shape)
        _randomize_batch_norms(layer)
        x = rng.uniform(-1, 1, shape).astype("float32")
        volume = x.reshape(-1, 1, 3, side, side).astype(np.float64)
        geometry = ((1, 1), (2, 1), (2, 1), (1, 0))
        for conv, bn, (stride, padding) in zip(layer.convs, layer.bns, geometry):
            weight = np.transpose(conv.kernel.numpy(), (3, 2, 0, 1))[:, :, None]
            volume = _np_conv3d(volume, weight, (1, stride, stride), (0, padding, padding))
            stats = [v.numpy() for v in (bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance)]
            volume = np.maximum(_np_batch_norm(volume, stats, False), 0.0)
        assert volume.shape[2:] == (3, 1, 1)
        expected = np.transpose(volume[:, :, :, 0, 0], (0, 2, 1)).reshape(1, 2, 2, 2, 3, 5)
        assert np.abs(expected).max() > 0.1
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=False)), expected, rtol=1e-5, atol=1e-5)
        layer.trainable = False
        np.testing.assert_allclose(ops.convert_to_numpy(layer(x, training=True)), expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("training", [False, True])
    def test_selfy_block_matches_numpy(self, training):
        rng = np.random.default_rng(7)
        block = SELFYBlock(**TINY_BLOCK_ARGS)
        block.build(TINY_INPUT_SHAPE)
        # Random weights in the PyTorch layout, loaded through the mapping.
        weights = {}
        for record in selfy_block_mapping(block):
            kind = record.torch_key.rsplit(".", 1)[-1]
            keras_shape = tuple(record.variable.shape)
            if kind == "weight" and len(keras_shape) == 4:
                kh, kw, i, o = keras_shape
                if record.transform == "conv2d":
                    shape = (o, i, kh, kw)
                elif record.transform == "conv3d_1kk":
                    shape = (o, i, 1, kh, kw)
                else:
                    shape = (i, o, 1, 1, 1)
                array = rng.normal(0, np.sqrt(2.0 / (i * kh * kw)), shape)
            elif kind == "running_var":
                array = rng.uniform(0.5, 2.0, keras_shape)
            elif kind == "weight":
                array = rng.uniform(0.5, 1.5, keras_shape)
            else:
                array = rng.normal(0, 0.2, keras_shape)
            weights[record.torch_key] = array.astype("float32")
            record.variable.assign(record.convert(weights[record.torch_key]))
        x = rng.normal(size=TINY_INPUT_SHAPE).astype("float32")
        expected = _np_selfy_block(x, weights, 2, (3, 9, 9), training)
        assert np.abs(expected - np.maximum(x, 0)).max() > 0.1  # the branch matters
        outputs = ops.convert_to_numpy(block(x, training=training))
        # Batch statistics of tiny batches amplify float32 rounding.
        tolerance = 1e-3 if training else 2e-4
        np.testing.assert_allclose(outputs, expected, rtol=tolerance, atol=tolerance)

    def test_sync_block_without_strategy_matches_plain_block(self):
        # One replica: synchronized statistics are those of the local batch,
        # and inference folds the same moving statistics into the kernels.
        inputs = np.random.default_rng(3).normal(0.5, 1.5, TINY_INPUT_SHAPE).astype("float32")
        plain = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False)
        synced = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False, sync_batchnorm=True)
        plain.build(TINY_INPUT_SHAPE)
        synced.build(TINY_INPUT_SHAPE)
        _randomize_batch_norms(plain)
        synced.set_weights(plain.get_weights())
        np.testing.assert_array_equal(ops.convert_to_numpy(synced(inputs)), ops.convert_to_numpy(plain(inputs)))
        np.testing.assert_allclose(
            ops.convert_to_numpy(synced(inputs, training=True)),
            ops.convert_to_numpy(plain(inputs, training=True)),
            rtol=1e-3, atol=1e-3,
        )
        for mine, theirs in zip(synced.non_trainable_weights, plain.non_trainable_weights):
            np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)

    @tensorflow_only
    def test_sync_block_under_mirrored_strategy_matches_whole_batch(self):
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        completed = subprocess.run(
            [sys.executable, "-c", _MIRRORED_SYNC_BATCH_NORM_SCRIPT],
            capture_output=True, text=True, env=environment, timeout=300,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        assert result["replicas"] == 2
        # Moving statistics after one step equal those of one replica that
        # saw the whole batch (per-replica statistics differ by up to 0.15).
        assert len(result["moving"]) == 20
        for mine, whole in zip(result["moving"], result["whole_moving"]):
            np.testing.assert_allclose(mine, whole, rtol=1e-4, atol=1e-4)
        # Gradients flow through the all-reduce: their sum over replicas is
        # the whole-batch gradient. Channels that are nearly constant over
        # these tiny batches amplify float32 rounding of the split sums (up to
        # 1 % of the largest gradient for some initial weights), far less than
        # the error of per-replica batch norms, which the tolerance must reject.
        errors, unsynced_errors = [], []
        for mine, unsynced, whole in zip(
            result["gradients"], result["unsynced_gradients"], result["whole_gradients"]
        ):
            scale = np.abs(whole).max()
            errors.append(np.abs(np.subtract(mine, whole)).max() / scale)
            unsynced_errors.append(np.abs(np.subtract(unsynced, whole)).max() / scale)
        assert max(errors) < 0.03, errors
        assert max(unsynced_errors) > 0.1, unsynced_errors
        # Inference with the trained weights matches a non-synchronized block.
        plain = SELFYBlock(**TINY_BLOCK_ARGS, zero_init_last=False)
        plain.build((None, 8, 8, 8))
        plain.set_weights([np.asarray(w, "float32") for w in result["weights"]])
        inputs = np.asarray(result["inputs"], "float32")
        np.testing.assert_allclose(result["inference"], ops.convert_to_numpy(plain(inputs)), rtol=1e-6, atol=1e-6)
