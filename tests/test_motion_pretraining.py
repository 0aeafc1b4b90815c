"""The recipe of the shipped motion pretraining (`trainer.motion_pretraining`)."""

import dataclasses
import json
import os

import numpy as np

from trainer import motion_pretraining
from trainer.motion_pretraining import PretrainingSettings


def test_stage2_clips_use_the_wide_ranges_and_both_polarities():
    settings = PretrainingSettings()
    demo_like, wide = (motion_pretraining._polarity_configs(settings, wide) for wide in (False, True))
    for bright_on_dark, dark_on_bright in (demo_like, wide):
        assert min(bright_on_dark.object_luminance_range) > max(bright_on_dark.background_luminance_range)
        assert dark_on_bright.object_luminance_range == bright_on_dark.background_luminance_range
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


def test_clips_of_a_stage_interleave_polarities_with_unique_ids():
    settings = PretrainingSettings(frame_size=16, num_frames=2)
    clips = list(motion_pretraining._clips(settings, "train", 5, wide=True))
    ids = [media_id for _, _, media_id in clips]
    assert len(set(ids)) == 5 and [media_id[:3] for media_id in ids] == ["p0-", "p1-", "p0-", "p1-", "p0-"]
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
