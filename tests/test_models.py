"""Tests of the model zoo: registry, architectures, counts, MACs, saving, training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from selfy_tf.layers import SELFYBlock, TemporalShift
from selfy_tf.models import (
    FramePreprocessing,
    SegmentConsensus,
    count_macs,
    create_model,
    get_pretrained_cfg,
    list_models,
    list_pretrained,
    register_model,
    resolve_selfy_channels,
    tsm_resnet,
    with_dtype_policy,
)

EXPECTED_MODELS = sorted(
    f"{variant}_{depth}"
    for variant in ("tsn", "tsm", "selfy_tsm")
    for depth in ("r18", "r34", "r50", "r101")
)


def _trainable_count(model: keras.Model) -> int:
    return int(sum(np.prod(variable.shape) for variable in model.trainable_weights))


def _clip(batch: int, num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, num_frames, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def full_size_r50():
    """selfy_tsm_r50 and tsm_r50 at 174 classes, 8 x 224² (built once: slow)."""
    return {
        name: create_model(name, num_classes=174, num_frames=8, input_size=224)
        for name in ("selfy_tsm_r50", "tsm_r50")
    }


class TestModelsBasic:
    def test_list_models_names_all_twelve(self):
        assert list_models() == EXPECTED_MODELS
        assert list_models("selfy_*") == [name for name in EXPECTED_MODELS if name.startswith("selfy_")]

    @pytest.mark.parametrize("name", EXPECTED_MODELS)
    def test_forward_tiny(self, name, tiny_model_factory):
        model = tiny_model_factory(name, num_classes=5, num_frames=2, input_size=32)
        assert model.input.shape == (None, 2, 32, 32, 3)
        assert model.output.shape == (None, 5)
        logits = model(_clip(2, 2, 32).astype("float32"), training=False)
        assert logits.shape == (2, 5)
        assert logits.dtype == "float32"
        assert np.all(np.isfinite(np.asarray(logits)))
        shifts = [layer for layer in model.layers if isinstance(layer, TemporalShift)]
        blocks = [layer for layer in model.layers if isinstance(layer, SELFYBlock)]
        num_residual_blocks = sum(tsm_resnet.RESNET_ARCHS[name.rsplit("_", 1)[1]].layers)
        assert len(shifts) == (0 if name.startswith("tsn") else num_residual_blocks)
        assert len(blocks) == (1 if name.startswith("selfy") else 0)

    def test_uint8_input_with_predict(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        clip = _clip(3, 2, 32)
        from_uint8 = model.predict(clip, verbose=0, batch_size=3)
        from_float = model.predict(clip.astype("float32"), verbose=0, batch_size=3)
        assert from_uint8.dtype == np.float32
        np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)

    def test_layer_names_mirror_torch_modules(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r50", num_frames=2)
        for name in ("conv1", "bn1", "layer1_0_conv3", "layer2_0_downsample_0",
                     "layer2_0_downsample_1", "layer4_2_bn3", "selfy", "new_fc"):
            model.get_layer(name)
        assert isinstance(model.get_layer("selfy"), SELFYBlock)
        # The SELFY block follows res3 (layer2) and feeds layer3.
        names = [layer.name for layer in model.layers]
        assert names.index("layer2_3_relu") < names.index("selfy") < names.index("layer3_0_conv1")

    @pytest.mark.parametrize("stage, previous", [("res2", "layer1_1_relu"), ("res4", "layer3_1_relu")])
    def test_selfy_stage(self, stage, previous, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2, input_size=64, selfy_stage=stage)
        assert model.get_layer("selfy").input is model.get_layer(previous).output

    def test_zero_init_last_batch_norms(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r50", num_frames=2)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                expected = 0.0 if layer.name.endswith("_bn3") else 1.0
                np.testing.assert_array_equal(np.asarray(layer.gamma), expected)
        model18 = tiny_model_factory("tsm_r18", num_frames=2)
        np.testing.assert_array_equal(np.asarray(model18.get_layer("layer1_0_bn2").gamma), 0.0)
        np.testing.assert_array_equal(np.asarray(model18.get_layer("layer1_0_bn1").gamma), 1.0)
        block = model.get_layer("selfy")
        np.testing.assert_array_equal(np.asarray(block.stss_integration.upsample_bn.gamma), 0.0)

    def test_sync_batchnorm(self, tiny_model_factory):
        model = tiny_model_factory("tsm_r18", num_frames=2, sync_batchnorm=True)
        norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert norms and all(layer.synchronized for layer in norms)

    def test_sync_batchnorm_reaches_selfy_block(self, tiny_model_factory):
        model = tiny_model_factory(num_frames=2, sync_batchnorm=True)
        norms = [
            layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        block = model.get_layer("selfy")
        assert block.sync_batchnorm is True
        # 20 backbone batch norms of a ResNet-18 plus the block's 10.
        assert len(norms) == 30
        assert all(layer.synchronized for layer in norms)
        plain = tiny_model_factory(num_frames=2)
        assert plain.get_layer("selfy").sync_batchnorm is False

    @pytest.mark.parametrize(
        "choice,backbone,selfy",
        [
            (None, "exact", "exact"),
            ("exact", "exact", "exact"),
            ("tensorflow_backbone", "tensorflow", "exact"),
            ("tensorflow", "tensorflow", "tensorflow"),
        ],
    )
    def test_batch_norm_statistics_rule(self, choice, backbone, selfy, tiny_model_factory):
        model = tiny_model_factory(num_frames=2, batch_norm_statistics=choice)
        block = model.get_layer("selfy")
        backbone_norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        block_norms = [
            layer for layer in block._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert (len(backbone_norms), len(block_norms)) == (20, 10)
        assert {layer.training_statistics for layer in backbone_norms} == {backbone}
        assert {layer.training_statistics for layer in block_norms} == {selfy}
        assert block.get_config()["batch_norm_statistics"] == selfy
        with pytest.raises(ValueError, match=r"`batch_norm_statistics` must be one of .*Received: batch_norm_statistics='fast'"):
            tiny_model_factory(num_frames=2, batch_norm_statistics="fast")

    def test_keras_file_before_batch_norm_statistics_loads_exact(self, tiny_model_factory, tmp_path):
        import json
        import zipfile

        model = tiny_model_factory("selfy_tsm_r18", num_frames=2, batch_norm_statistics="tensorflow")
        path = tmp_path / "model.keras"
        model.save(path)
        # A file of an earlier version: no statistics keys, exact everywhere.
        old_path = tmp_path / "old.keras"

        def drop_keys(value):
            if isinstance(value, dict):
                return {
                    key: drop_keys(item) for key, item in value.items()
                    if key not in ("training_statistics", "batch_norm_statistics")
                }
            if isinstance(value, list):
                return [drop_keys(item) for item in value]
            return value

        with zipfile.ZipFile(path) as source, zipfile.ZipFile(old_path, "w") as target:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "config.json":
                    assert b"training_statistics" in data and b"batch_norm_statistics" in data
                    data = json.dumps(drop_keys(json.loads(data))).encode()
                target.writestr(item, data)
        loaded = keras.models.load_model(old_path)
        norms = [
            layer for layer in loaded._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert len(norms) == 30 and {layer.training_statistics for layer in norms} == {"exact"}
        # The new keys round-trip.
        reloaded = keras.models.load_model(path)
        assert reloaded.get_layer("layer1_0_bn1").training_statistics == "tensorflow"
        assert reloaded.get_layer("selfy").batch_norm_statistics == "tensorflow"
        clip = _clip(2, 2, 32).astype("float32")
        expected = np.asarray(model(clip, training=False))
        np.testing.assert_array_equal(np.asarray(loaded(clip, training=False)), expected)
        np.testing.assert_array_equal(np.asarray(reloaded(clip, training=False)), expected)

    def test_mixed_precision_output_is_float32(self, tiny_model_factory):
        keras.config.set_dtype_policy("mixed_float16")
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        logits = model(_clip(1, 2, 32), training=False)
        assert model.get_layer("layer1_0_conv1").compute_dtype == "float16"
        assert logits.dtype == "float32"

    def test_dtype_policy_argument(self, tiny_model_factory, tmp_path):
        reference = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2, dtype_policy="mixed_bfloat16")
        assert keras.config.dtype_policy().name == "float32"
        assert reference.get_layer("layer1_0_conv1").compute_dtype == "float32"
        for name in ("layer1_0_conv1", "selfy", "new_fc"):
            assert model.get_layer(name).compute_dtype == "bfloat16"
        assert all(variable.dtype == "float32" for variable in model.weights)
        model.set_weights(reference.get_weights())
        clip = _clip(2, 2, 32)
        expected = keras.ops.convert_to_numpy(reference(clip, training=False))
        logits = model(clip, training=False)
        assert logits.dtype == "float32"
        # bfloat16 keeps 8 significant bits: a few percent of the logit range.
        error = np.abs(keras.ops.convert_to_numpy(logits) - expected).max()
        assert 0 < error <= 0.05 * np.abs(expected).max()
        model.save(tmp_path / "bf16.keras")
        restored = keras.models.load_model(tmp_path / "bf16.keras")
        assert restored.get_layer("selfy").compute_dtype == "bfloat16"
        np.testing.assert_array_equal(restored(clip, training=False), logits)
        with pytest.raises(ValueError, match="dtype_policy"):
            tiny_model_factory(dtype_policy="bfloat17")
        assert keras.config.dtype_policy().name == "float32"

    def test_with_dtype_policy_equals_building_with_it(self, tiny_model_factory):
        reference = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        converted = with_dtype_policy(reference, "mixed_bfloat16")
        built = tiny_model_factory("selfy_tsm_r18", num_frames=2, dtype_policy="mixed_bfloat16")
        built.set_weights(reference.get_weights())
        assert converted.get_layer("selfy").compute_dtype == "bfloat16"
        assert converted.get_layer("consensus").compute_dtype == "float32"
        assert reference.get_layer("selfy").compute_dtype == "float32"
        clip = _clip(2, 2, 32)
        np.testing.assert_array_equal(converted(clip, training=False), built(clip, training=False))
        with pytest.raises(ValueError, match="dtype_policy"):
            with_dtype_policy(reference, "int7")

    def test_width_and_selfy_channels(self):
        # The reference widths of DESIGN.md §3.
        assert resolve_selfy_channels(None) == {
            "hidden_channels": 128,
            "extraction_channels": (4, 16, 64, 64),
            "integration_channels": (64, 64, 64, 64),
        }
        assert resolve_selfy_channels(16) == {
            "hidden_channels": 16,
            "extraction_channels": (1, 2, 8, 8),
            "integration_channels": (8, 8, 8, 8),
        }
        resolved = resolve_selfy_channels({"hidden_channels": 32})
        assert resolved["hidden_channels"] == 32
        assert resolved["extraction_channels"] == (4, 16, 64, 64)
        model = create_model("selfy_tsm_r18", num_classes=3, num_frames=2, input_size=32,
                             width_multiplier=0.25, selfy_channels={"hidden_channels": 8})
        assert model.get_layer("conv1").filters == 16
        assert model.get_layer("layer4_0_conv1").filters == 128
        assert model.get_layer("selfy").hidden_channels == 8

    def test_stss_options_pass_through(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2, stss_backend="shift")
        block = model.get_layer("selfy")
        assert block.stss_backend == "shift"
        assert block.stss_transformation.stss_backend == "shift"

    def test_stss_xla_is_a_runtime_switch_not_a_model_argument(self, tiny_model_factory):
        import tensorflow as tf

        from selfy_tf.ops import stss_xla, stss_xla_enabled
        from serving.tflite import xla_functions

        with pytest.raises(TypeError, match="unexpected arguments \\['stss_jit'\\]"):
            tiny_model_factory("selfy_tsm_r18", num_frames=2, stss_jit=True)
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        assert "stss_jit" not in model.get_layer("selfy").get_config()
        spec = tf.TensorSpec([1, 2, 32, 32, 3], tf.float32)

        def trace():
            function = tf.function(lambda frames: model(frames, training=False))
            return xla_functions(function.get_concrete_function(spec))

        assert not stss_xla_enabled() and trace() == []
        with stss_xla(True):
            assert trace()
            with stss_xla(False):
                assert trace() == []
            assert stss_xla_enabled()
        assert not stss_xla_enabled()

    def test_old_keras_file_with_stss_jit_loads(self, tiny_model_factory, tmp_path):
        import json
        import zipfile

        model = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        path = tmp_path / "model.keras"
        model.save(path)
        # A file of an earlier version: the SELFY layers stored `stss_jit`.
        old_path = tmp_path / "old.keras"
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(old_path, "w") as target:
            for item in source.infolist():
                data = source.read(item.filename)
                if item.filename == "config.json":
                    config = json.loads(data)
                    layers = config["config"]["layers"]
                    block = next(layer for layer in layers if layer["class_name"] == "SELFYBlock")
                    block["config"]["stss_jit"] = True
                    data = json.dumps(config).encode()
                target.writestr(item, data)
        with zipfile.ZipFile(old_path) as archive:
            assert b'"stss_jit": true' in archive.read("config.json")
        loaded = keras.models.load_model(old_path)
        assert "stss_jit" not in loaded.get_layer("selfy").get_config()
        clip = _clip(2, 2, 32).astype("float32")
        np.testing.assert_array_equal(
            np.asarray(loaded(clip, training=False)), np.asarray(model(clip, training=False))
        )

    def test_preset_parameter_counts(self, full_size_r50):
        """Trainable counts of the official release (DESIGN.md §3), via the preset table."""
        checked = {}
        for key in list_pretrained():
            cfg = get_pretrained_cfg(key)
            arch = key.split(".")[0]
            if cfg["params"] is None or (arch, cfg["num_classes"]) in checked:
                continue
            if cfg["num_classes"] == 174 and arch in full_size_r50:
                model = full_size_r50[arch]
            else:
                model = create_model(arch, num_classes=cfg["num_classes"], num_frames=2, input_size=32)
            checked[(arch, cfg["num_classes"])] = _trainable_count(model)
            assert checked[(arch, cfg["num_classes"])] == cfg["params"], key
        assert checked[("selfy_tsm_r50", 174)] == 24_830_842
        assert checked[("tsm_r50", 174)] == 23_864_558
        assert checked[("selfy_tsm_r18", 174)] == 11_764_346

    def test_errors(self):
        with pytest.raises(ValueError, match="Unknown model `name`: 'resnet50'.*list_models"):
            create_model("resnet50", num_classes=10)
        with pytest.raises(ValueError, match="divisible by 16.*input_size=200"):
            create_model("selfy_tsm_r18", num_classes=10, input_size=200)
        with pytest.raises(ValueError, match="`selfy_stage` must be one of"):
            create_model("selfy_tsm_r18", num_classes=10, selfy_stage="res5")
        with pytest.raises(ValueError, match="`selfy_channels` has unknown keys"):
            create_model("selfy_tsm_r18", num_classes=10, selfy_channels={"hidden": 8})
        with pytest.raises(ValueError, match="`selfy_channels` must be None, a positive int"):
            create_model("selfy_tsm_r18", num_classes=10, selfy_channels=-1)
        with pytest.raises(ValueError, match="`num_classes` must be a positive integer"):
            create_model("tsm_r18", num_classes=0)
        with pytest.raises(ValueError, match="`input_size` must be at least 32"):
            create_model("tsm_r18", num_classes=2, input_size=16)
        with pytest.raises(ValueError, match="`dropout` must be in"):
            create_model("tsm_r18", num_classes=2, dropout=1.5)
        with pytest.raises(ValueError, match="`width_multiplier` must be positive"):
            create_model("tsm_r18", num_classes=2, width_multiplier=0)
        with pytest.raises(ValueError, match="already registered"):
            register_model(tsm_resnet.tsm_r18)
        with pytest.raises(FileNotFoundError, match="`weights` file not found"):
            create_model("tsm_r18", num_classes=2, input_size=32, weights="/nonexistent.pth.tar")

    def test_weights_argument_rejects_unknown_suffix(self, tmp_path):
        path = tmp_path / "weights.npz"
        path.write_bytes(b"")
        with pytest.raises(ValueError, match="`weights` must be an official PyTorch checkpoint"):
            create_model("tsm_r18", num_classes=2, input_size=32, weights=str(path))

    def test_keras_round_trip(self, tiny_model_factory, tmp_path):
        model = tiny_model_factory("selfy_tsm_r18", num_frames=2)
        # Non-trivial weights: the zero-initialised gammas would hide the blocks.
        for variable in model.weights:
            if variable.path.endswith("gamma"):
                variable.assign(np.full(variable.shape, 0.7, "float32"))
        clip = _clip(2, 2, 32).astype("float32")
        expected = np.asarray(model(clip, training=False))
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.models.load_model(path)
        assert type(loaded) is type(model)
        assert isinstance(loaded.get_layer("selfy"), SELFYBlock)
        np.testing.assert_array_equal(np.asarray(loaded(clip, training=False)), expected)
        weights_path = tmp_path / "model.weights.h5"
        model.save_weights(weights_path)
        again = create_model("selfy_tsm_r18", num_classes=5, num_frames=2, input_size=32,
                             width_multiplier=0.125, selfy_channels=16, weights=str(weights_path))
        np.testing.assert_array_equal(np.asarray(again(clip, training=False)), expected)

    def test_fit_with_xla(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r18", num_classes=3, num_frames=2)
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        clips = _clip(4, 2, 32).astype("float32")
        labels = np.array([0, 1, 2, 1])
        before = [np.asarray(variable).copy() for variable in model.trainable_weights]
        history = model.fit(clips, labels, batch_size=2, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        changed = [not np.array_equal(b, np.asarray(a)) for b, a in zip(before, model.trainable_weights)]
        assert any(changed)


class TestPretrainedTags:
    """`create_model("arch.tag")` builds the architecture of a pretrained config."""

    TINY = {"width_multiplier": 0.125, "selfy_channels": 16}

    def test_tag_fields_are_defaults(self):
        # sthv1_16f: Something-Something V1 (174 classes), 16 frames.
        model = create_model("selfy_tsm_r50.sthv1_16f", input_size=32, **self.TINY)
        assert model.input.shape == (None, 16, 32, 32, 3)
        assert model.output.shape == (None, 174)
        assert model.get_layer("selfy").num_frames == 16
        assert model.name == "selfy_tsm_r50"

    def test_explicit_arguments_override_the_tag(self):
        model = create_model(
            "selfy_tsm_r18.sthv1_8f", num_classes=3, num_frames=2, input_size=32, **self.TINY
        )
        assert model.input.shape == (None, 2, 32, 32, 3)
        assert model.output.shape == (None, 3)

    def test_unknown_tag_names_it_and_lists_the_valid_tags(self):
        with pytest.raises(ValueError) as raised:
            create_model("selfy_tsm_r50.kinetics_32f")
        message = str(raised.value)
        assert "`kinetics_32f`" in message
        for tag in ("sthv1_8f", "sthv1_16f", "sthv2_8f", "sthv2_16f"):
            assert tag in message
        # Tags of other architectures are not offered.
        with pytest.raises(ValueError, match=r"Valid tags of `tsm_r50`: sthv1_8f\.$"):
            create_model("tsm_r50.sthv1_16f")
        with pytest.raises(ValueError, match="Unknown model `name`: 'resnet50'"):
            create_model("resnet50.sthv1_8f")

    def test_pretrained_loads_the_tag_weights_file(self, tmp_path, monkeypatch):
        from selfy_tf.models import _registry

        arguments = {"num_classes": 3, "num_frames": 2, "input_size": 32, **self.TINY}
        source = create_model("selfy_tsm_r18", **arguments)
        for variable in source.weights:
            if variable.path.endswith("gamma"):
                variable.assign(np.full(variable.shape, 0.7, "float32"))
        path = tmp_path / "tiny.weights.h5"
        source.save_weights(path)
        monkeypatch.setitem(
            _registry._pretrained_cfgs,
            "selfy_tsm_r18.tiny_test",
            tsm_resnet._cfg(weights_file=str(path), **arguments),
        )
        loaded = create_model("selfy_tsm_r18.tiny_test", pretrained=True)
        clip = _clip(2, 2, 32).astype("float32")
        np.testing.assert_array_equal(
            np.asarray(loaded(clip, training=False)), np.asarray(source(clip, training=False))
        )
        with pytest.raises(ValueError, match="either `pretrained=True`.*or `weights=PATH`"):
            create_model("selfy_tsm_r18.tiny_test", pretrained=True, weights=str(path))

    def test_pretrained_needs_a_tag_with_a_weights_file(self):
        with pytest.raises(ValueError, match="`pretrained=True` needs a pretrained config"):
            create_model("selfy_tsm_r18", pretrained=True)
        with pytest.raises(ValueError, match="'selfy_tsm_r18.sthv1_8f' has no `weights_file`"):
            create_model("selfy_tsm_r18.sthv1_8f", pretrained=True)


class TestModelsCorrectness:
    def test_frame_preprocessing_matches_numpy(self):
        clip = _clip(2, 3, 8)
        layer = FramePreprocessing(num_frames=3)
        frames = np.asarray(layer(clip))
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        expected = ((clip.astype(np.float32) / 255.0 - mean) / std).reshape(6, 8, 8, 3)
        np.testing.assert_allclose(frames, expected, atol=1e-6)
        assert layer.compute_output_shape((None, 3, 8, 8, 3)) == (None, 8, 8, 3)
        with pytest.raises(ValueError, match="built for num_frames=3"):
            FramePreprocessing(num_frames=3)(np.zeros((1, 2, 8, 8, 3), np.float32))

    def test_segment_consensus_is_frame_mean(self):
        values = np.arange(24, dtype=np.float32).reshape(6, 4)
        result = np.asarray(SegmentConsensus(num_frames=3)(values))
        expected = np.stack([values[0:3].mean(0), values[3:6].mean(0)])
        np.testing.assert_allclose(result, expected, rtol=1e-6)
        restored = SegmentConsensus.from_config(SegmentConsensus(num_frames=3).get_config())
        assert restored.num_frames == 3
        with pytest.raises(ValueError, match="multiple of num_frames=4"):
            SegmentConsensus(num_frames=4)(np.zeros((6, 2), np.float32))

    def test_macs_match_the_paper(self, full_size_r50):
        """MACs per 8x224² clip (DESIGN.md §3) within 1%, and per-layer counts by hand."""
        by_layer = count_macs(full_size_r50["selfy_tsm_r50"], by_layer=True)
        assert abs(sum(by_layer.values()) / 35.99e9 - 1) < 0.01
        # STSS: frames x 14 x 14 x 5·9·9 entries, 128 channels each.
        assert by_layer["selfy/stss_transformation/stss"] == 8 * 14 * 14 * 405 * 128
        # Stem: 112² outputs x 7·7·3 x 64 per frame.
        assert by_layer["conv1"] == 8 * 112 * 112 * 49 * 3 * 64
        # Transposed 1x1 convolution counted on its 14² inputs.
        assert by_layer["selfy/stss_integration/upsample"] == 8 * 14 * 14 * 64 * 512
        # Extraction conv1: 5x5 outputs of a 3x3 conv 4 -> 16 at 8·14·14·5 positions.
        assert by_layer["selfy/stss_extraction/conv1"] == 8 * 14 * 14 * 5 * 25 * 9 * 4 * 16
        assert by_layer["new_fc"] == 8 * 2048 * 174
        assert abs(count_macs(full_size_r50["tsm_r50"]) / 32.70e9 - 1) < 0.01

    def test_macs_of_a_dense_model_by_hand(self):
        inputs = keras.Input((4, 6))
        outputs = keras.layers.Dense(5)(keras.layers.Conv1D(3, 3, padding="same")(inputs))
        model = keras.Model(inputs, outputs)
        assert count_macs(model) == 4 * 3 * 6 * 3 + 4 * 3 * 5
