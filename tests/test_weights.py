"""Tests of weight import: official checkpoints, ImageNet backbones, the CLI.

References: the official PyTorch release's own output on the parity fixture
(`../shared/fixtures/official_selfy_tsm_r18/`) and a plain-PyTorch
re-implementation (`selfy_tf.weights.torch_reference`, written from
DESIGN.md) for the ResNet-50 bottleneck path, which has no fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='weight import needs torch: pip install -e ".[test]"')

from selfy_cli.main import main  # noqa: E402
from selfy_tf.layers import SELFYBlock  # noqa: E402
from selfy_tf.models import create_model  # noqa: E402
from selfy_tf.weights import (  # noqa: E402
    TORCH_TRANSFORMS,
    load_imagenet_resnet,
    load_official_checkpoint,
    load_official_state_dict,
    selfy_block_mapping,
    selfy_block_skipped_keys,
    torch_module_name,
    torch_reference,  # noqa: E402
    torch_weight_mapping,
)

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "official_selfy_tsm_r18"
CHECKPOINT = FIXTURE / "checkpoint.pth.tar"
MISSING_FIXTURE = (
    f"official parity fixture not found at {FIXTURE}: put the project's shared/ folder "
    "beside this checkout (README.md, \"Set up\")"
)
TINY = {"width_multiplier": 0.125, "selfy_channels": 16}

def _fixture_io() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(FIXTURE / "io.npz")
    return data["frames_uint8"], data["logits"]


def _fixture_model() -> keras.Model:
    return create_model("selfy_tsm_r18", num_classes=10, num_frames=2, input_size=64)


def _tiny_reference(name: str, num_classes: int = 7, num_frames: int = 4, seed: int = 1, **kwargs):
    torch.manual_seed(seed)
    reference = torch_reference.build_reference(name, num_classes, num_frames, **TINY, **kwargs)
    torch_reference.randomize_batch_norms(reference, seed)
    with torch.no_grad():
        reference.new_fc.weight.mul_(10.0)
    return reference


def _numpy_state(reference) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in reference.official_state_dict().items()}


def _clip(batch: int, num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, num_frames, size, size, 3), dtype=np.uint8)


def _tiny_selfy_block() -> SELFYBlock:
    """A built SELFY block on 2 clips of 2 frames, 8x8x8 features."""
    block = SELFYBlock(
        num_frames=2,
        hidden_channels=4,
        window=(3, 9, 9),
        extraction_channels=(2, 3, 4, 5),
        integration_channels=(3, 4, 5, 6),
    )
    block.build((4, 8, 8, 8))
    return block


class TestWeightsBasic:
    def test_torch_module_names(self):
        assert torch_module_name("conv1") == "conv1"
        assert torch_module_name("layer2_0_downsample_1") == "layer2.0.downsample.1"
        assert torch_module_name("layer4_2_conv3") == "layer4.2.conv3"
        assert torch_module_name("layer1_0_shift") is None
        assert torch_module_name("new_fc") is None

    def test_mapping_covers_every_variable(self, tiny_model_factory):
        model = tiny_model_factory("selfy_tsm_r50", num_frames=2)
        records = torch_weight_mapping(model)
        mapped = {id(record.variable) for record in records}
        weights = [variable for variable in model.weights if "seed_generator" not in variable.path]
        assert mapped == {id(variable) for variable in weights}
        keys = [record.torch_key for record in records]
        assert len(keys) == len(set(keys))
        assert "module.base_model.layer2.0.downsample.0.weight" in keys
        assert "module.base_model.selfy.stss_integration.upsample.0.weight" in keys
        assert {"module.new_fc.weight", "module.new_fc.bias"} <= set(keys)

    def test_selfy_block_mapping_covers_every_variable_once(self):
        block = _tiny_selfy_block()
        records = selfy_block_mapping(block)
        assert sorted(id(r.variable) for r in records) == sorted(id(v) for v in block.weights)
        keys = [r.torch_key for r in records]
        assert len(set(keys)) == len(keys)
        assert "module.base_model.selfy.stss_integration.conv3_fuse.1.weight" in keys
        assert "module.base_model.selfy.stss_integration.upsample.1.running_var" in keys
        skipped = selfy_block_skipped_keys(block)
        assert len(skipped) == 10
        assert "module.base_model.selfy.stss_extraction.conv3.1.num_batches_tracked" in skipped

    def test_selfy_block_mapping_rejects_wrong_shape(self):
        record = selfy_block_mapping(_tiny_selfy_block())[0]
        with pytest.raises(ValueError, match="converted with `conv2d` has shape"):
            record.convert(np.zeros((4, 8, 5, 5)))
        with pytest.raises(ValueError, match=r"shape \(out, in, 1, k, k\)"):
            TORCH_TRANSFORMS["conv3d_1kk"](np.zeros((4, 8, 3, 3, 3)))

    def test_selfy_block_mapping_needs_built_block(self):
        with pytest.raises(ValueError, match="needs a built `SELFYBlock`"):
            selfy_block_mapping(SELFYBlock())

    def test_linear_transform(self, tiny_model_factory):
        model = tiny_model_factory("tsm_r18", num_classes=3, num_frames=2)
        record = next(r for r in torch_weight_mapping(model) if r.torch_key == "module.new_fc.weight")
        weight = np.arange(3 * 64, dtype=np.float32).reshape(3, 64, 1)
        converted = record.convert(weight)
        assert converted.shape == (64, 3)
        assert converted[5, 2] == weight[2, 5, 0]
        with pytest.raises(ValueError, match="expects \\(64, 3\\)"):
            record.convert(np.zeros((4, 64), np.float32))

    def test_strict_errors_name_keys(self, tiny_model_factory):
        reference = _tiny_reference("selfy_tsm_r18", num_classes=5, num_frames=2)
        state = _numpy_state(reference)
        model = tiny_model_factory("selfy_tsm_r18", num_classes=5, num_frames=2)
        missing = dict(state)
        del missing["module.base_model.layer3.1.bn2.running_var"]
        with pytest.raises(ValueError, match="missing keys \\(1\\): module.base_model.layer3.1.bn2.running_var"):
            load_official_state_dict(model, missing)
        unexpected = dict(state, **{"module.base_model.extra.weight": np.zeros(3, np.float32)})
        with pytest.raises(ValueError, match="unexpected keys \\(1\\): module.base_model.extra.weight"):
            load_official_state_dict(model, unexpected)
        other = tiny_model_factory("selfy_tsm_r18", num_classes=6, num_frames=2)
        with pytest.raises(ValueError, match="shape-mismatched keys \\(2\\): module.new_fc.weight"):
            load_official_state_dict(other, state)
        # Nothing is assigned when strict loading fails.
        np.testing.assert_array_equal(np.asarray(other.get_layer("bn1").moving_variance), 1.0)

    def test_non_strict_and_fresh_classifier(self, tiny_model_factory):
        reference = _tiny_reference("tsm_r18", num_classes=5, num_frames=2)
        state = _numpy_state(reference)
        model = tiny_model_factory("tsm_r18", num_classes=6, num_frames=2)
        report = load_official_state_dict(model, state, strict=False)
        assert [key for key, _, _ in report.mismatched] == ["module.new_fc.weight", "module.new_fc.bias"]
        assert report.fresh == ["new_fc/kernel", "new_fc/bias"]
        fresh = tiny_model_factory("tsm_r18", num_classes=6, num_frames=2)
        report = load_official_state_dict(fresh, state, load_classifier=False)
        assert report.ok and report.fresh == ["new_fc/kernel", "new_fc/bias"]
        assert "module.new_fc.weight" in report.skipped
        np.testing.assert_array_equal(
            np.asarray(fresh.get_layer("conv1").kernel),
            state["module.base_model.conv1.weight"].transpose(2, 3, 1, 0),
        )

    def test_key_variants(self, tiny_model_factory):
        """No `module.` prefix (saved without DataParallel); classifier as `base_model.fc1`."""
        reference = _tiny_reference("tsn_r18", num_classes=5, num_frames=2)
        state = {key[len("module."):]: value for key, value in _numpy_state(reference).items()}
        state = {key.replace("new_fc.", "base_model.fc1."): value for key, value in state.items()}
        model = tiny_model_factory("tsn_r18", num_classes=5, num_frames=2)
        report = load_official_state_dict(model, state)
        assert report.ok and not report.fresh

    def test_file_errors(self, tmp_path, tiny_model_factory, monkeypatch):
        model = tiny_model_factory("tsn_r18", num_frames=2)
        with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
            load_official_checkpoint(model, tmp_path / "absent.pth.tar")
        bad = tmp_path / "bad.pth.tar"
        torch.save({"epoch": 3}, bad)
        with pytest.raises(ValueError, match="holds no PyTorch state dict"):
            load_official_checkpoint(model, bad)
        monkeypatch.setitem(__import__("sys").modules, "torch", None)
        with pytest.raises(ImportError, match='pip install -e ".\\[torch\\]"'):
            load_official_checkpoint(model, bad)


class TestWeightsCorrectness:
    @pytest.mark.skipif(not CHECKPOINT.exists(), reason=MISSING_FIXTURE)
    def test_official_fixture_parity(self):
        """The converted model reproduces the official PyTorch logits."""
        model = _fixture_model()
        report = load_official_checkpoint(model, CHECKPOINT)
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
        counters = [key for key in state if key.endswith("num_batches_tracked")]
        assert sorted(report.skipped) == sorted(counters)
        assert len(report.loaded) == len(state) - len(counters)
        assert report.ok and not report.fresh
        frames, logits = _fixture_io()
        np.testing.assert_allclose(model.predict(frames, verbose=0), logits, atol=1e-4, rtol=0)

    @pytest.mark.skipif(not CHECKPOINT.exists(), reason=MISSING_FIXTURE)
    def test_torch_reference_matches_official_fixture(self):
        """The PyTorch reference used below reproduces the official code's output."""
        reference = torch_reference.build_reference("selfy_tsm_r18", 10, 2)
        state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
        reference.load_state_dict({key[len("module."):]: value for key, value in state.items()})
        frames, logits = _fixture_io()
        np.testing.assert_allclose(torch_reference.run_reference(reference, frames), logits, atol=1e-4, rtol=0)

    @pytest.mark.parametrize(
        "name, reference_options, model_options",
        [
            ("selfy_tsm_r50", {}, {}),
            ("tsm_r50", {}, {}),
            ("tsn_r18", {}, {}),
            # The reference's `selfy_stage` (the benchmarks' tiny_cpu model).
            ("selfy_tsm_r18", {"selfy_stage": "res2", "stss_method": "all_pairs"}, {"selfy_stage": "res2"}),
        ],
    )
    def test_parity_with_torch_reference(self, name, reference_options, model_options, tiny_model_factory):
        """Bottleneck (R50), TSM, TSN and SELFY-after-res2 paths against the PyTorch reference."""
        reference = _tiny_reference(name, num_classes=7, num_frames=4, **reference_options)
        model = tiny_model_factory(name, num_classes=7, num_frames=4, **model_options)
        report = load_official_state_dict(model, _numpy_state(reference))
        assert report.ok and not report.fresh
        clip = _clip(2, 4, 32)
        expected = torch_reference.run_reference(reference, clip)
        assert np.abs(expected).max() > 0.5
        np.testing.assert_allclose(np.asarray(model(clip, training=False)), expected, atol=1e-4, rtol=0)

    def test_imagenet_torchvision_layout(self, tiny_model_factory, tmp_path):
        reference = _tiny_reference("tsm_r50", num_classes=7, num_frames=2)
        state = {
            key[len("base_model."):]: value
            for key, value in reference.state_dict().items()
            if key.startswith("base_model.")
        }
        channels = reference.base_model.out_channels
        state["fc.weight"] = torch.zeros(1000, channels)
        state["fc.bias"] = torch.zeros(1000)
        path = tmp_path / "resnet50-tiny.pth"
        torch.save(state, path)
        model = tiny_model_factory("selfy_tsm_r50", num_classes=7, num_frames=2)
        selfy_before = [np.asarray(v).copy() for v in model.get_layer("selfy").weights]
        report = load_imagenet_resnet(model, path)
        assert report.ok
        assert {"fc.weight", "fc.bias"} <= set(report.skipped)
        assert "new_fc/kernel" in report.fresh
        assert all(path.startswith(("selfy/", "new_fc/")) for path in report.fresh)
        np.testing.assert_array_equal(
            np.asarray(model.get_layer("layer3_1_conv2").kernel),
            state["layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0),
        )
        np.testing.assert_array_equal(
            np.asarray(model.get_layer("layer1_0_bn3").moving_mean),
            state["layer1.0.bn3.running_mean"].numpy(),
        )
        for before, variable in zip(selfy_before, model.get_layer("selfy").weights):
            np.testing.assert_array_equal(before, np.asarray(variable))
        too_small = tiny_model_factory("selfy_tsm_r18", num_classes=7, num_frames=2)
        with pytest.raises(ValueError, match="unexpected keys .*layer1.0.conv3.weight"):
            load_imagenet_resnet(too_small, path)

    def test_imagenet_from_keras_weights(self, tiny_model_factory, tmp_path):
        source = tiny_model_factory("tsm_r18", num_classes=5, num_frames=4)
        for variable in source.weights:
            if "seed_generator" not in variable.path:
                variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype("float32"))
        path = tmp_path / "tsm_r18.weights.h5"
        source.save_weights(path)
        target = tiny_model_factory("selfy_tsm_r18", num_classes=3, num_frames=2)
        report = load_imagenet_resnet(target, path)
        assert report.ok and "new_fc" in report.skipped
        for name in ("conv1", "bn1", "layer2_0_downsample_1", "layer4_1_conv2"):
            for loaded, original in zip(target.get_layer(name).weights, source.get_layer(name).weights):
                np.testing.assert_array_equal(np.asarray(loaded), np.asarray(original))
        assert all(path.startswith(("selfy/", "new_fc/")) for path in report.fresh)
        deeper = tiny_model_factory("tsm_r34", num_classes=3, num_frames=2)
        with pytest.raises(ValueError, match="missing keys .*layer1_2_conv1"):
            load_imagenet_resnet(deeper, path)
        with pytest.raises(FileNotFoundError, match="ImageNet weights not found"):
            load_imagenet_resnet(deeper, tmp_path / "absent.weights.h5")


class TestTorchReferenceSTSS:
    """The official release's all-pairs STSS path, which the benchmarks time as the baseline."""

    @pytest.mark.parametrize("shape, window", [((1, 3, 5, 6, 4), (3, 5, 3)), ((2, 2, 4, 4, 3), (5, 3, 5))])
    def test_all_pairs_matches_the_definition(self, shape, window):
        from test_stss import reference_stss

        features = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        channels_first = torch.from_numpy(features).permute(0, 1, 4, 2, 3)
        result = torch_reference.stss_all_pairs(channels_first, window).numpy()
        np.testing.assert_allclose(result, reference_stss(features, window), atol=2e-6)

    def test_block_methods_agree_forward_and_backward(self):
        torch.manual_seed(0)
        by_definition = torch_reference.SELFYBlockReference(16, 2, hidden_channels=8)
        all_pairs = torch_reference.SELFYBlockReference(16, 2, hidden_channels=8, stss_method="all_pairs")
        all_pairs.load_state_dict(by_definition.state_dict())
        torch_reference.randomize_batch_norms(by_definition, seed=2)
        torch_reference.randomize_batch_norms(all_pairs, seed=2)
        with torch.no_grad():  # the zero-initialised last gamma would hide the STSS path
            for block in (by_definition, all_pairs):
                block.stss_integration.upsample[1].weight.fill_(1.0)
        features = torch.randn(4, 16, 8, 8)
        gradients = []
        for block in (by_definition, all_pairs):
            inputs = features.clone().requires_grad_(True)
            block.train()(inputs).square().sum().backward()
            gradients.append(inputs.grad.numpy())
        np.testing.assert_allclose(gradients[1], gradients[0], rtol=1e-4, atol=1e-4)
        assert np.abs(gradients[0]).max() > 0.1

    def test_unknown_stss_method_is_refused(self):
        with pytest.raises(ValueError, match="`stss_method` must be one of .*Received: stss_method='loop'"):
            torch_reference.SELFYBlockReference(16, 2, stss_method="loop")


class TestConvertWeightsCommand:
    @pytest.mark.skipif(not CHECKPOINT.exists(), reason=MISSING_FIXTURE)
    def test_convert_fixture(self, tmp_path, capsys):
        destination = tmp_path / "selfy_tsm_r18.weights.h5"
        keras_out = tmp_path.parent / f"{tmp_path.name}-model.keras"
        status = main([
            "convert-weights", str(CHECKPOINT), str(destination),
            "--arch", "selfy_tsm_r18", "--num-classes", "10", "--num-frames", "2",
            "--input-size", "64", "--keras-out", str(keras_out),
        ])
        assert status == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["loaded_tensors"] == 152 and summary["unexpected_tensors"] == 0
        assert summary["max_abs_logits_difference"] < 1e-4
        assert summary["max_abs_preprocessing_difference"] < 1e-5
        assert [path.name for path in tmp_path.iterdir()] == [destination.name]
        # The whole model carries the official evaluation view.
        from selfy_tf.run_dir import read_model_info

        assert read_model_info(str(keras_out)) == {"eval_view": {"eval_size": [240, 320]}}
        keras.utils.clear_session()
        model = create_model("selfy_tsm_r18", num_classes=10, num_frames=2, input_size=64, weights=str(destination))
        frames, logits = _fixture_io()
        np.testing.assert_allclose(model.predict(frames, verbose=0), logits, atol=1e-4, rtol=0)

    def test_bad_arguments(self, tmp_path, capsys):
        status = main([
            "convert-weights", str(tmp_path / "absent.pth.tar"), str(tmp_path / "out.h5"),
            "--model", "tsm_r18", "--num-classes", "10",
        ])
        assert status == 1
        assert "`dst` must end with '.weights.h5'" in capsys.readouterr().err
        status = main([
            "convert-weights", str(tmp_path / "absent.pth.tar"), str(tmp_path / "out.weights.h5"),
            "--model", "tsm_r18", "--num-classes", "10",
        ])
        assert status == 1
        assert "Checkpoint not found" in capsys.readouterr().err
