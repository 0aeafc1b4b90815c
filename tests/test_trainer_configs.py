"""Experiment configs: presets, YAML, `--set` overrides, strict keys, cross-field checks."""

from __future__ import annotations

import dataclasses

import pytest

from trainer import configs, presets


class TestPresets:
    @pytest.mark.parametrize("name", presets.list_presets())
    def test_every_preset_validates(self, name):
        configs.validate(presets.get_preset(name))

    def test_paper_presets(self):
        ssv1 = configs.resolve_model(presets.get_preset("ssv1_selfy_r50_8f"))
        assert ssv1.model.name == "selfy_tsm_r50.sthv1_8f"
        assert (ssv1.model.num_classes, ssv1.model.num_frames) == (174, 8)
        assert ssv1.data.no_flip_classes == (86, 87, 93, 94, 166, 167)
        assert (ssv1.optimizer.base_lr, ssv1.optimizer.base_batch_size) == (0.01, 64)
        assert (ssv1.optimizer.momentum, ssv1.optimizer.nesterov, ssv1.optimizer.weight_decay) == (0.9, True, 5e-4)
        assert ssv1.optimizer.clip_global_norm == 20.0
        assert (ssv1.schedule.name, ssv1.schedule.decay_epochs, ssv1.train.epochs) == ("step", (30.0, 40.0), 50)
        assert ssv1.model.dropout == 0.5
        assert configs.resolve_model(presets.get_preset("ssv1_selfy_r50_16f")).model.num_frames == 16
        kinetics = configs.resolve_model(presets.get_preset("kinetics_selfy_r50_8f"))
        assert (kinetics.model.num_classes, kinetics.optimizer.classifier_lr_mult) == (400, 5.0)
        tiny = configs.resolve_model(presets.get_preset("tiny_cpu"))
        assert tiny.model.input_size <= 64 and tiny.model.num_frames == 4

    # What every preset built before its model fields named registry defaults
    # (docs/training.md's preset table; parameter counts of the official
    # release, DESIGN.md §3, with 2049 weights per class of the ResNet-50
    # classifier for Kinetics' 400 classes).
    R50 = {"input_size": 224, "dropout": 0.5, "width_multiplier": 1.0, "selfy_channels": None, "selfy_stage": "res3"}
    EXPECTED_MODELS = {
        "ssv1_selfy_r50_8f": ("selfy_tsm_r50", {"num_classes": 174, "num_frames": 8, **R50}, 24_830_842),
        "ssv1_selfy_r50_16f": ("selfy_tsm_r50", {"num_classes": 174, "num_frames": 16, **R50}, 24_830_842),
        "ssv2_selfy_r50_8f": ("selfy_tsm_r50", {"num_classes": 174, "num_frames": 8, **R50}, 24_830_842),
        "kinetics_selfy_r50_8f": (
            "selfy_tsm_r50", {"num_classes": 400, "num_frames": 8, **R50}, 24_830_842 + 226 * 2049
        ),
        "tiny_cpu": (
            "selfy_tsm_r18",
            {"num_classes": None, "num_frames": 4, "input_size": 32, "dropout": 0.0,
             "width_multiplier": 0.125, "selfy_channels": 8, "selfy_stage": "res2"},
            None,
        ),
        # Fine-tunes the shipped model; its classes come from the data.
        "small_videos_cpu": (
            "selfy_tsm_r18",
            {"num_classes": None, "num_frames": 8, "input_size": 48, "dropout": 0.2,
             "width_multiplier": 0.25, "selfy_channels": 32, "selfy_stage": "res2"},
            None,
        ),
    }

    @pytest.mark.parametrize("name", presets.list_presets())
    def test_presets_name_a_registry_config_instead_of_its_fields(self, name):
        from selfy_tf.models import list_pretrained

        model = presets.get_preset(name).model
        assert model.name in list_pretrained()
        fields = [field.name for field in dataclasses.fields(model) if field.name not in ("name", "init")]
        assert {field: getattr(model, field) for field in fields} == dict.fromkeys(fields)

    def test_changing_the_name_takes_its_defaults_and_set_still_wins(self):
        config = configs.apply_overrides(
            presets.get_preset("ssv1_selfy_r50_8f"),
            ["model.name=selfy_tsm_r50.sthv1_16f", "model.dropout=0.2"],
        )
        model = configs.resolve_model(config).model
        assert (model.num_frames, model.dropout, model.num_classes) == (16, 0.2, 174)
        model = configs.resolve_model(
            configs.apply_overrides(presets.get_preset("tiny_cpu"), ["model.num_frames=6"])
        ).model
        assert (model.num_frames, model.input_size, model.width_multiplier) == (6, 32, 0.125)

    def test_unknown_model_tag_is_refused_by_validate(self):
        config = configs.apply_overrides(configs.ExperimentConfig(), ["model.name=selfy_tsm_r50.sthv3"])
        with pytest.raises(ValueError, match=r"`model.name`: Unknown tag `sthv3`.*sthv1_8f"):
            configs.validate(config)

    def test_resolved_config_file_is_complete(self, tmp_path):
        path = str(tmp_path / "config.yaml")
        configs.save_yaml(configs.resolve_model(presets.get_preset("ssv1_selfy_r50_16f")), path)
        import yaml

        with open(path) as stream:
            model = yaml.safe_load(stream)["model"]
        assert model["name"] == "selfy_tsm_r50.sthv1_16f"
        assert (model["num_classes"], model["num_frames"], model["input_size"], model["dropout"]) == (174, 16, 224, 0.5)
        assert configs.resolve_model(configs.load_yaml(path)) == configs.load_yaml(path)

    def test_expectations_cover_every_preset(self):
        assert sorted(self.EXPECTED_MODELS) == presets.list_presets()

    @pytest.mark.parametrize("preset", sorted(EXPECTED_MODELS))
    def test_every_preset_builds_the_same_model_as_before(self, preset):
        import numpy as np

        from trainer.train import build_model

        arch, fields, params = self.EXPECTED_MODELS[preset]
        model_config = configs.resolve_model(presets.get_preset(preset)).model
        resolved = {name: getattr(model_config, name) for name in fields}
        assert resolved == fields
        assert (model_config.stss_backend, model_config.sync_batchnorm) == ("matmul", False)
        config = presets.get_preset(preset)
        if config.model.num_classes is None and fields["num_classes"] is None:
            config.model.num_classes = 5
        model = build_model(config)
        size, frames = fields["input_size"], fields["num_frames"]
        assert model.name == arch == model_config.name.split(".")[0]
        assert model.input.shape == (None, frames, size, size, 3)
        assert model.output.shape == (None, fields["num_classes"] or 5)
        block = model.get_layer("selfy")
        assert (block.num_frames, block.hidden_channels) == (frames, fields["selfy_channels"] or 128)
        assert model.get_layer("conv1").filters == int(64 * fields["width_multiplier"])
        dropout = [layer.rate for layer in model.layers if layer.name == "dropout"]
        assert dropout == ([fields["dropout"]] if fields["dropout"] else [])
        if params is not None:
            assert sum(int(np.prod(weight.shape)) for weight in model.trainable_weights) == params

    def test_batch_norm_statistics_reaches_the_model(self):
        from trainer.train import build_model

        config = presets.get_preset("tiny_cpu")
        assert configs.resolve_model(config).model.batch_norm_statistics == "exact"
        config = configs.apply_overrides(config, ["model.batch_norm_statistics=tensorflow_backbone"])
        if config.model.num_classes is None:
            config.model.num_classes = 5
        model = build_model(config)
        assert model.get_layer("bn1").training_statistics == "tensorflow"
        assert model.get_layer("selfy").batch_norm_statistics == "exact"

    def test_presets_are_fresh_copies(self):
        presets.get_preset("tiny_cpu").train.epochs = 99
        assert presets.get_preset("tiny_cpu").train.epochs != 99

    def test_unknown_preset(self):
        with pytest.raises(ValueError, match="Unknown preset `nope`. Valid presets: .*tiny_cpu"):
            presets.get_preset("nope")

    def test_registering_twice_raises(self):
        with pytest.raises(ValueError, match="already registered"):
            presets.register_preset("tiny_cpu")(lambda: configs.ExperimentConfig())


class TestOverrides:
    def test_values_are_parsed_by_field_type(self):
        config = configs.apply_overrides(
            presets.get_preset("tiny_cpu"),
            [
                "optimizer.base_lr=0.02",
                "train.epochs=5",
                "schedule.decay_epochs=[20, 30]",
                "model.selfy_channels=none",
                "optimizer.lr=null",
                "runtime.jit_compile=true",
                "model.init=imagenet:/weights/r50.pth",
            ],
        )
        assert config.optimizer.base_lr == 0.02 and config.train.epochs == 5
        assert config.schedule.decay_epochs == (20.0, 30.0)
        assert config.model.selfy_channels is None and config.optimizer.lr is None
        assert config.runtime.jit_compile is True
        assert config.model.init == "imagenet:/weights/r50.pth"

    def test_overrides_apply_in_order_and_leave_input_alone(self):
        base = presets.get_preset("tiny_cpu")
        config = configs.apply_overrides(base, ["train.epochs=5", "train.epochs=7"])
        assert config.train.epochs == 7 and base.train.epochs == 3

    def test_unknown_key_names_key_and_class(self):
        with pytest.raises(ValueError, match=r"Unknown config key `optimizer.lrr`: OptimizerConfig has no field `lrr`"):
            configs.apply_overrides(configs.ExperimentConfig(), ["optimizer.lrr=1"])
        with pytest.raises(ValueError, match=r"Unknown config key `trainn.epochs`: ExperimentConfig has no field `trainn`"):
            configs.apply_overrides(configs.ExperimentConfig(), ["trainn.epochs=1"])

    def test_bad_values(self):
        with pytest.raises(ValueError, match=r"`train.epochs` expects an integer. Received: train.epochs='abc'"):
            configs.apply_overrides(configs.ExperimentConfig(), ["train.epochs=abc"])
        with pytest.raises(ValueError, match=r"`model.sync_batchnorm` expects true or false"):
            configs.apply_overrides(configs.ExperimentConfig(), ["model.sync_batchnorm=maybe"])
        with pytest.raises(ValueError, match="must look like `section.field=value`"):
            configs.apply_overrides(configs.ExperimentConfig(), ["train.epochs"])
        with pytest.raises(ValueError, match="`optimizer` is a section"):
            configs.apply_overrides(configs.ExperimentConfig(), ["optimizer=3"])


class TestYaml:
    def test_round_trip(self, tmp_path):
        config = configs.apply_overrides(presets.get_preset("ssv1_selfy_r50_16f"), ["train.epochs=7"])
        path = str(tmp_path / "config.yaml")
        configs.save_yaml(config, path)
        assert configs.load_yaml(path) == config

    def test_partial_file_with_preset(self, tmp_path):
        path = tmp_path / "exp.yaml"
        path.write_text("preset: tiny_cpu\ntrain:\n  epochs: 9\noptimizer:\n  momentum: 0.8\n")
        config = configs.load_yaml(str(path))
        assert config.model.name == "selfy_tsm_r18.tiny"
        assert (config.train.epochs, config.optimizer.momentum) == (9, 0.8)

    def test_config_of_an_earlier_version_with_model_stss_jit_loads(self, tmp_path):
        # `model.stss_jit` became the runtime switch `runtime.stss_xla`.
        path = tmp_path / "config.yaml"
        path.write_text("model:\n  name: selfy_tsm_r18\n  stss_jit: false\n  num_frames: 4\n")
        config = configs.load_yaml(str(path))
        assert (config.runtime.stss_xla, config.model.num_frames) == (False, 4)
        assert configs.ExperimentConfig().runtime.stss_xla is True

    def test_unknown_yaml_key_names_file_key_and_class(self, tmp_path):
        path = tmp_path / "bad.yaml"
        path.write_text("model:\n  depth: 50\n")
        with pytest.raises(ValueError, match=r"bad.yaml: Unknown config key `model.depth`: ModelConfig has no field"):
            configs.load_yaml(str(path))

    def test_missing_file(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="Config file not found"):
            configs.load_yaml(str(tmp_path / "none.yaml"))


class TestValidate:
    @pytest.mark.parametrize(
        "override, message",
        [
            ("schedule.name=linear", r"`schedule.name` must be one of .* Received: 'linear'"),
            ("schedule.decay_epochs=[40, 30]", "`schedule.decay_epochs` must be increasing"),
            ("schedule.warmup_epochs=80", r"`schedule.warmup_epochs`=80.0 must not exceed `train.epochs`=50"),
            ("data.no_flip_classes=[200]", r"`data.no_flip_classes` must be class indices below `model.num_classes`=174"),
            ("data.validation_num_crops=2", "`data.validation_num_crops` 1 or 3"),
            ("runtime.strategy=horovod", r"`runtime.strategy` must be one of"),
            ("runtime.mixed_precision=float16", r"`runtime.mixed_precision` must be one of"),
            ("model.init=scratch", r"`model.init` must be '', 'imagenet:PATH', 'official:PATH', 'keras:PATH' or 'pretrained'"),
            ("loss.label_smoothing=1.5", r"`loss.label_smoothing` must be in \[0, 1\)"),
            ("data.eval_size=[100, 320]", r"`data.eval_size` must be empty or \(height, width\) no smaller than"),
            # Before the checks that compare with it (`schedule.warmup_epochs`).
            ("train.epochs=-1", r"^`train.epochs` must be >= 1. Received: -1.$"),
            ("data.flip=mirror", r"`data.flip` must be one of \('auto', 'none', 'all'\). Received: 'mirror'"),
        ],
    )
    def test_cross_field_errors(self, override, message):
        config = configs.apply_overrides(presets.get_preset("ssv1_selfy_r50_8f"), [override])
        with pytest.raises(ValueError, match=message):
            configs.validate(config)


class TestCropScales:
    def test_default_is_the_official_multi_scale_crop(self):
        from tfrecords import augment

        assert configs.DataConfig().crop_scales == augment.MULTI_SCALE_CROP_SCALES
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), ["data.crop_scales=[1.0]"])
        assert config.data.crop_scales == (1.0,)

    @pytest.mark.parametrize("value", ["[]", "[1.5]", "[0.0, 1.0]"])
    def test_bad_crop_scales(self, value):
        config = configs.apply_overrides(presets.get_preset("tiny_cpu"), [f"data.crop_scales={value}"])
        with pytest.raises(ValueError, match=r"`data.crop_scales` must be one or more fractions in \(0, 1\]"):
            configs.validate(config)

    def test_training_input_crops_with_the_configured_scales(self, tmp_path):
        """Frames whose pixel value is twice the column: a crop of width w,
        resized to 32, spans about 2 * w grey levels from left to right."""
        import importlib

        import numpy as np
        import tensorflow as tf

        from tfrecords import write_split

        train_module = importlib.import_module("trainer.train")  # the package exports a function `train`

        columns = np.arange(96, dtype=np.uint8) * 2
        frames = np.broadcast_to(columns[None, None, :, None], (4, 64, 96, 3)).copy()
        write_split(str(tmp_path), "train", [(frames, 0, "a"), (frames, 1, "b")], ["x", "y"])
        data = train_module.DataInfo(
            data_dir=str(tmp_path), labels=["x", "y"],
            train_files=[str(tmp_path / "train-00000-of-00001.tfrecord")], num_train_examples=2,
            validation_files=[], num_validation_examples=0,
        )

        def spans(overrides):
            config = configs.apply_overrides(
                presets.get_preset("tiny_cpu"),
                ["model.num_frames=2", "model.input_size=32", "model.num_classes=2", *overrides],
            )
            dataset = train_module._train_dataset(
                tf.distribute.get_strategy(), config, data, epoch=0, skip_steps=0,
                num_steps=20, global_batch=2,
            )
            values = np.concatenate([batch[0].numpy() for batch in dataset]).astype(np.float32)
            rows = values[:, :, 16, :, 0]  # [clips, frames, columns]
            return np.abs(rows[..., -1] - rows[..., 0]).ravel()

        whole_short_side = spans(["data.crop_scales=[1.0]"])
        # A 64-pixel window spans 2 * 63 levels less the resize's edge blending.
        assert whole_short_side.min() > 118 and whole_short_side.max() < 130
        official = spans([])
        assert official.min() < 100  # the 0.66 and 0.75 windows are narrower
