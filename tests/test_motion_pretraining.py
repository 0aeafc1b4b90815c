"""The recipe of the shipped motion pretraining (`trainer.motion_pretraining`)."""

import dataclasses
import json
import os

import numpy as np

from trainer import motion_pretraining
from trainer.motion_pretraining import PretrainingSettings


def test_stage2_clips_use_the_wide_ranges_and_three_kinds_of_contrast():
    settings = PretrainingSettings()
    demo_like, wide = (motion_pretraining._contrast_configs(settings, wide) for wide in (False, True))
    assert len(demo_like) == 2 and len(wide) == 3
    for bright_on_dark, dark_on_bright in (demo_like, wide[:2]):
        assert min(bright_on_dark.object_luminance_range) > max(bright_on_dark.background_luminance_range)
        assert dark_on_bright.object_luminance_range == bright_on_dark.background_luminance_range
        assert bright_on_dark.min_color_distance == 0.0
    by_hue = wide[2]
    assert by_hue.object_luminance_range == by_hue.background_luminance_range == settings.hue_luminance_range
    assert by_hue.min_color_distance == settings.hue_min_color_distance > 0
    assert by_hue.radius_range == wide[0].radius_range and by_hue.max_outside == wide[0].max_outside
    assert demo_like[0].max_outside == 0.0 and wide[0].max_outside == settings.wide_max_outside
    assert wide[0].radius_range == settings.wide_radius_range
    assert wide[0].background_frequency_range == settings.wide_background_frequency_range
    assert wide[0].background_frequency_range[1] > demo_like[0].background_frequency_range[1]


def test_stage_configs_differ_only_in_recipe_and_init():
    settings = PretrainingSettings(epochs=3, wide_epochs=2, learning_rate=0.2, wide_learning_rate=0.02)
    stage1 = motion_pretraining.pretraining_config("selfy_tsm_r18", settings)
    stage2 = motion_pretraining.pretraining_config("selfy_tsm_r18", settings, init="keras:/runs/a/last.keras")
    assert (stage1.model.init, stage1.train.epochs, stage1.optimizer.lr) == ("", 3, 0.2)
    assert (stage2.model.init, stage2.train.epochs, stage2.optimizer.lr) == ("keras:/runs/a/last.keras", 2, 0.02)
    assert stage1.model.name == stage2.model.name == "selfy_tsm_r18.motion"
    assert stage1.schedule.warmup_epochs == settings.warmup_epochs
    assert stage2.schedule.warmup_epochs == settings.wide_warmup_epochs
    # Every layer alike: the fine-tuning preset's classifier multipliers stay out.
    from trainer.configs import OptimizerConfig

    for stage in (stage1, stage2):
        plain = dataclasses.replace(stage.optimizer, lr=None, weight_decay=OptimizerConfig.weight_decay)
        assert plain == OptimizerConfig() and stage.optimizer.weight_decay == settings.weight_decay


def test_clips_of_a_stage_interleave_the_kinds_with_unique_ids():
    settings = PretrainingSettings(frame_size=16, num_frames=2)
    for wide, kinds in ((False, ["p0-", "p1-", "p0-", "p1-", "p0-"]), (True, ["p0-", "p1-", "p2-", "p0-", "p1-"])):
        clips = list(motion_pretraining._clips(settings, "train", 5, wide=wide))
        ids = [media_id for _, _, media_id in clips]
        assert len(set(ids)) == 5 and [media_id[:3] for media_id in ids] == kinds
        assert all(frames.shape == (2, 16, 16, 3) and frames.dtype == np.uint8 for frames, _, _ in clips)


def test_shipped_record_matches_the_settings():
    """pretraining.json was written with this script's defaults."""

    from selfy_tf.models.tsm_resnet import PRETRAINED_DIR

    with open(os.path.join(PRETRAINED_DIR, "pretraining.json")) as stream:
        record = json.load(stream)
    defaults = json.loads(json.dumps(dataclasses.asdict(PretrainingSettings())))
    assert record["settings"] == defaults
    for model_name in motion_pretraining.MOTION_MODELS:
        assert os.path.exists(os.path.join(PRETRAINED_DIR, record["models"][model_name]["weights"]))
