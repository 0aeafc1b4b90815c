"""Fine-tuning: the STSS grid check, weights copied between models, `model.init`
kinds `keras:PATH` and `pretrained`, and the shipped motion-pretrained models."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from selfy_tf.models import create_model, get_pretrained_cfg, stss_grid_problem
from selfy_tf.weights import copy_matching_weights
from trainer import configs, presets


class TestStssGridCheck:
    # Output strides 4 / 8 / 16 after res2 / res3 / res4; the 9x9 window's
    # offsets reach 4 cells, which a grid of 5x5 or more holds.
    @pytest.mark.parametrize(
        "input_size, stage, grid",
        [(32, "res3", 4), (32, "res4", 2), (64, "res4", 4), (32, "res2", None), (48, "res3", None), (224, "res3", None)],
    )
    def test_grids_too_small_for_the_window_are_named(self, input_size, stage, grid):
        problem = stss_grid_problem(input_size, stage)
        if grid is None:
            assert problem is None
        else:
            assert f"{grid}x{grid} feature grid" in problem and "9x9 STSS window" in problem

    def test_the_message_names_sizes_that_fit(self):
        problem = stss_grid_problem(32, "res3")
        # res3: 5 cells x 8 = 40, rounded up to the even-map multiple 16 -> 48;
        # res2: 5 x 4 = 20 -> the backbone's minimum 32.
        assert "input_size >= 48" in problem and "selfy_stage='res2' with input_size >= 32" in problem
        assert stss_grid_problem(48, "res3") is None and stss_grid_problem(32, "res2") is None

    def test_create_model_warns_for_selfy_models_only(self, caplog, tiny_model_factory):
        with caplog.at_level(logging.WARNING, logger="selfy_tf.models.tsm_resnet"):
            tiny_model_factory("tsm_r18", input_size=32)
            assert not caplog.records
            tiny_model_factory("selfy_tsm_r18", input_size=32, selfy_stage="res3")
        assert len(caplog.records) == 1 and "4x4 feature grid" in caplog.records[0].getMessage()


    def test_selfy_train_warns_at_the_start_and_in_its_summary(self, tmp_path, capsys, monkeypatch):
        import sys

        from selfy_cli.main import main
        from trainer.synthetic import write_color_dataset

        data = write_color_dataset(str(tmp_path / "data"), num_classes=2, num_train=4, num_validation=0, num_shards=1)
        monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
        command = [
            "train", "--preset", "tiny_cpu", "--data", data, "--out", str(tmp_path / "run"),
            "--epochs", "1", "--set", "model.selfy_stage=res3",
        ]
        assert main(command) == 0
        captured = capsys.readouterr()
        assert "4x4 feature grid" in captured.err
        summary = [line for line in captured.out.splitlines() if line.startswith("  warning:")]
        assert any("4x4 feature grid" in line and "selfy_stage='res2'" in line for line in summary)


class TestCopyMatchingWeights:
    def test_everything_but_a_resized_classifier_is_copied(self, tiny_model_factory):
        source = tiny_model_factory("selfy_tsm_r18", num_classes=7, input_size=32, selfy_stage="res2")
        target = tiny_model_factory("selfy_tsm_r18", num_classes=3, input_size=32, selfy_stage="res2")
        classifier = [value.copy() for value in target.get_layer("new_fc").get_weights()]
        assert copy_matching_weights(source, target) == ["new_fc"]
        for layer in source.layers:
            if layer.name == "new_fc":
                continue
            for a, b in zip(layer.get_weights(), target.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(classifier, target.get_layer("new_fc").get_weights()):
            np.testing.assert_array_equal(a, b)

    def test_another_architecture_is_refused(self, tiny_model_factory):
        source = tiny_model_factory("selfy_tsm_r18", selfy_stage="res2")
        with pytest.raises(ValueError, match="different architectures"):
            copy_matching_weights(source, tiny_model_factory("selfy_tsm_r18", selfy_stage="res2", width_multiplier=0.25))
        with pytest.raises(ValueError, match="Layer `selfy` of .* has no counterpart"):
            copy_matching_weights(tiny_model_factory("tsm_r18"), tiny_model_factory("selfy_tsm_r18", selfy_stage="res2"))


class TestInitKinds:
    def test_fine_tuning_takes_the_class_count_from_the_data(self):
        config = configs.resolve_model(presets.get_preset("small_videos_cpu"))
        assert config.model.init == "pretrained" and config.model.num_classes is None
        plain = configs.apply_overrides(presets.get_preset("small_videos_cpu"), ["model.init="])
        assert configs.resolve_model(plain).model.num_classes == 10

    @pytest.mark.parametrize(
        "init, message",
        [
            ("pretrained:/x.keras", "must be ''"),
            ("keras:", "must be ''"),
            ("onnx:/x", "must be ''"),
        ],
    )
    def test_bad_init_is_refused(self, init, message):
        config = configs.apply_overrides(presets.get_preset("small_videos_cpu"), [f"model.init={init}"])
        with pytest.raises(ValueError, match=message):
            configs.validate(config)

    def test_pretrained_needs_a_config_with_weights(self):
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.init=pretrained"])
        with pytest.raises(ValueError, match="needs a `model.name` whose pretrained config has a weights file"):
            configs.validate(config)

    def test_keras_init_loads_an_earlier_model(self, tmp_path, tiny_model_factory):
        from trainer.train import build_model

        source = tiny_model_factory("selfy_tsm_r18", num_classes=6, input_size=32, selfy_stage="res2")
        path = str(tmp_path / "earlier.keras")
        source.save(path)
        config = configs.apply_overrides(
            presets.get_preset("tiny_cpu"),
            [
                "model.name=selfy_tsm_r18",
                "model.num_classes=4",
                "model.selfy_stage=res2",
                "model.selfy_channels=16",
                "model.width_multiplier=0.125",
                f"model.init=keras:{path}",
            ],
        )
        # tiny_model_factory's widths: hidden 16 -> (1, 2, 8, 8) / (8, 8, 8, 8).
        model = build_model(config)
        np.testing.assert_array_equal(
            model.get_layer("selfy").get_weights()[0], source.get_layer("selfy").get_weights()[0]
        )
        assert model.get_layer("new_fc").get_weights()[0].shape[-1] == 4


def _tiny_config(init: str, num_classes: int = 4):
    # tiny_model_factory's architecture, as trainer settings.
    return configs.apply_overrides(
        presets.get_preset("tiny_cpu"),
        [
            "model.name=selfy_tsm_r18",
            f"model.num_classes={num_classes}",
            "model.num_frames=4",
            "model.input_size=32",
            "model.selfy_stage=res2",
            "model.selfy_channels=16",
            "model.width_multiplier=0.125",
            f"model.init={init}",
        ],
    )


class TestOneWayToLoadWeights:
    """`create_model(weights=...)` and the trainer's `model.init` read a spec the same way."""

    def test_keras_spec_gives_the_same_model_through_both_entry_points(self, tmp_path, tiny_model_factory):
        from trainer.train import build_model

        source = tiny_model_factory("selfy_tsm_r18", num_classes=6, selfy_stage="res2")
        path = str(tmp_path / "earlier.keras")
        source.save(path)
        trained = build_model(_tiny_config(f"keras:{path}", num_classes=4))
        created = tiny_model_factory("selfy_tsm_r18", num_classes=4, selfy_stage="res2", weights=f"keras:{path}")
        for layer in source.layers:
            if layer.name == "new_fc":
                # A classifier of another size starts afresh in both.
                assert created.get_layer("new_fc").get_weights()[0].shape == (64, 4)
                assert trained.get_layer("new_fc").get_weights()[0].shape == (64, 4)
                continue
            for expected, through_trainer, through_create_model in zip(
                layer.get_weights(), trained.get_layer(layer.name).get_weights(), created.get_layer(layer.name).get_weights()
            ):
                np.testing.assert_array_equal(through_trainer, expected, err_msg=layer.name)
                np.testing.assert_array_equal(through_create_model, expected, err_msg=layer.name)

    def test_pretrained_spec_fine_tunes_through_create_model(self):
        pretrained = create_model("selfy_tsm_r18.motion", pretrained=True)
        model = create_model("selfy_tsm_r18.motion", num_classes=3, weights="pretrained")
        assert model.output.shape == (None, 3)
        selfy = pretrained.get_layer("selfy").get_weights()
        for expected, loaded in zip(selfy, model.get_layer("selfy").get_weights()):
            np.testing.assert_array_equal(loaded, expected)

    def test_a_bare_weights_file_path_is_read_by_its_suffix(self, tmp_path, tiny_model_factory):
        from selfy_tf.models import load_weights_file

        source = tiny_model_factory("tsm_r18")
        path = str(tmp_path / "source.weights.h5")
        source.save_weights(path)
        model = tiny_model_factory("tsm_r18")
        assert load_weights_file(model, path) == []
        for expected, loaded in zip(source.get_weights(), model.get_weights()):
            np.testing.assert_array_equal(loaded, expected)

    def test_errors_name_the_setting_that_holds_the_spec(self, tmp_path):
        from trainer.train import build_model

        missing = str(tmp_path / "missing.keras")
        with pytest.raises(FileNotFoundError, match="`model.init` file not found"):
            build_model(_tiny_config(f"keras:{missing}"))
        with pytest.raises(FileNotFoundError, match="`weights` file not found"):
            create_model("tsm_r18", num_classes=2, input_size=32, weights=f"keras:{missing}")
        with pytest.raises(ValueError, match="`weights=pretrained` needs a model name whose pretrained config"):
            create_model("tsm_r18", num_classes=2, input_size=32, weights="pretrained")


class TestShippedMotionModels:
    @pytest.mark.parametrize("arch", ["selfy_tsm_r18", "tsm_r18", "tsn_r18"])
    def test_weights_ship_with_the_package_and_load(self, arch):
        cfg = get_pretrained_cfg(f"{arch}.motion")
        assert os.path.isfile(cfg["weights_file"])
        # About 3 MB: width 1/4 (float32 weights).
        assert os.path.getsize(cfg["weights_file"]) < 4_000_000
        model = create_model(f"{arch}.motion", pretrained=True)
        assert model.output.shape == (None, 10)

    def test_the_shipped_selfy_model_recognises_synthetic_motion(self):
        # Clips the pretraining never saw (another seed) of its own classes.
        from selfy_tf.datasets import synthetic_motion

        model = create_model("selfy_tsm_r18.motion", pretrained=True)
        size = get_pretrained_cfg("selfy_tsm_r18.motion")["input_size"]
        clips, labels = synthetic_motion.generate_split(60, seed=1234, split="test", num_frames=8, size=size)
        predictions = np.argmax(model.predict(clips.astype("float32"), verbose=0), axis=-1)
        assert np.mean(predictions == labels) >= 0.6
