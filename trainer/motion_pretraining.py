"""Pretrains the small motion models that selfy-tf ships, on synthetic motion clips.

`selfy train --preset small_videos_cpu` fine-tunes `selfy_tsm_r18.motion`, a
SELFY TSM-R18 at width 1/4 whose weights (`selfy_tf/models/pretrained/`)
this script made, in two stages, each from its own synthetic clips of the
demo's motion classes (`selfy_tf.datasets.synthetic_motion`: ten kinds of
translation, rotation, scaling and stopping), with a bright object on a
dark ground and the reverse in equal shares, so that the features key on
motion, not on one contrast:

1. from scratch, on the demo's ranges of object size, growth and noise;
2. from stage 1, on wider ranges: smaller objects, smaller size changes,
   more noise, objects partly out of view, finer background stripes, and a
   third kind of contrast: object and background of similar brightness,
   told apart by colour only. From scratch on stage 2's clips (measured
   before the colour third) the models stayed at chance; after stage 1
   they learn them.

TSM and TSN of the same size are pretrained the same way, to compare the
three on a user's data. The user-like videos of
`selfy_tf.datasets.user_videos` are not used here.

    python -m trainer.motion_pretraining --work /tmp/motion --out selfy_tf/models/pretrained

Each stage's run directory stays in `WORK/runs/<model>` and
`WORK/runs/<model>_wide`: its `history.csv`, `result.json` and TensorBoard
logs record the pretraining; a rerun resumes (the datasets are kept,
finished runs are not redone).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from typing import Iterator, Sequence

import numpy as np

from selfy_tf.files import atomic_path, atomic_write_text

__all__ = ["MOTION_MODELS", "PretrainingSettings", "main", "pretrain", "pretraining_config", "write_pretraining_data"]

# Registry names of the shipped models, and the architecture they share
# (the `.motion` configs of `selfy_tf.models.list_pretrained()`).
MOTION_MODELS: tuple[str, ...] = ("selfy_tsm_r18", "tsm_r18", "tsn_r18")


@dataclasses.dataclass(frozen=True)
class PretrainingSettings:
    """Data and recipe of the pretraining.

    Args:
        num_train / num_validation: synthetic clips per split (in equal
            shares of each kind of contrast).
        frame_size: stored frame side; training crops are resized to the
            model's input size, as for a user's larger videos.
        num_frames: frames per clip; the model samples 8 of them (TSN
            segments), with the jitter of a user's longer clips.
        epochs / batch_size / learning_rate / weight_decay / warmup_epochs:
            the SGD recipe (cosine decay after a linear warm-up).
        seed: dataset and training seed.
        wide_epochs / wide_learning_rate / wide_warmup_epochs: the SGD
            recipe of stage 2, which starts from stage 1's weights.
        wide_radius_range / wide_scale_ratio_range / wide_noise_std_range /
            wide_max_outside / wide_background_frequency_range /
            wide_background_contrast: the object-size, growth, noise, edge
            and background-texture ranges of stage 2's clips
            (`synthetic_motion.MotionConfig`), wider than the demo's.
        hue_luminance_range / hue_min_color_distance: a third of stage 2's
            clips draw object and background luminance from this one range
            and keep them apart by colour alone (`MotionConfig.min_color_distance`),
            so that an object about as bright as its background still counts
            (the other two thirds are bright on dark and dark on bright).
    """

    num_train: int = 4000
    num_validation: int = 500
    frame_size: int = 64
    num_frames: int = 16
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 0.1
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    wide_epochs: int = 10
    wide_learning_rate: float = 0.03
    wide_warmup_epochs: float = 0.5
    wide_radius_range: tuple[float, float] = (0.06, 0.17)
    wide_scale_ratio_range: tuple[float, float] = (1.4, 2.6)
    wide_noise_std_range: tuple[float, float] = (2.0, 12.0)
    wide_max_outside: float = 0.5
    wide_background_frequency_range: tuple[float, float] = (0.5, 12.0)
    wide_background_contrast: float = 0.8
    hue_luminance_range: tuple[float, float] = (40.0, 215.0)
    hue_min_color_distance: float = 60.0


def _contrast_configs(settings: PretrainingSettings, wide: bool):
    """The clip kinds of a stage: the demo's ranges at 16 frames per clip (the
    per-frame speeds halved, so that the 8 frames the model samples move as
    far), with round objects as well as elongated ones, or stage 2's wider
    ranges; bright on dark and dark on bright, and in stage 2 also objects
    told from the background by colour rather than brightness."""
    from selfy_tf.datasets import synthetic_motion

    demo = synthetic_motion.DEFAULT_CONFIG
    bright_on_dark = dataclasses.replace(
        demo,
        aspect_range=(1.0, demo.aspect_range[1]),
        speed_range=tuple(speed / 2 for speed in demo.speed_range),
        rotation_degrees_range=tuple(degrees / 2 for degrees in demo.rotation_degrees_range),
    )
    if wide:
        bright_on_dark = dataclasses.replace(
            bright_on_dark,
            radius_range=settings.wide_radius_range,
            scale_ratio_range=settings.wide_scale_ratio_range,
            noise_std_range=settings.wide_noise_std_range,
            max_outside=settings.wide_max_outside,
            background_frequency_range=settings.wide_background_frequency_range,
            background_contrast=settings.wide_background_contrast,
        )
    dark_on_bright = dataclasses.replace(
        bright_on_dark,
        background_luminance_range=bright_on_dark.object_luminance_range,
        object_luminance_range=bright_on_dark.background_luminance_range,
    )
    if not wide:
        return bright_on_dark, dark_on_bright
    by_hue = dataclasses.replace(
        bright_on_dark,
        background_luminance_range=settings.hue_luminance_range,
        object_luminance_range=settings.hue_luminance_range,
        min_color_distance=settings.hue_min_color_distance,
    )
    return bright_on_dark, dark_on_bright, by_hue


def _renamed(clips, prefix: str) -> Iterator[tuple[np.ndarray, int, str]]:
    for frames, label, media_id in clips:
        yield frames, label, prefix + media_id


def _clips(
    settings: PretrainingSettings, split: str, num_clips: int, wide: bool
) -> Iterator[tuple[np.ndarray, int, str]]:
    """The clip kinds of one split in equal shares, interleaved, with unique
    media ids."""
    from selfy_tf.datasets import synthetic_motion

    configs = _contrast_configs(settings, wide)
    shares = []
    for kind, config in enumerate(configs):
        count = num_clips // len(configs) + (1 if kind < num_clips % len(configs) else 0)
        clips = synthetic_motion.iter_split(
            count, settings.seed + kind, split, settings.num_frames, settings.frame_size, config=config
        )
        shares.append(_renamed(clips, f"p{kind}-"))
    for group in itertools.zip_longest(*shares):
        yield from (clip for clip in group if clip is not None)


def write_pretraining_data(out_dir: str, settings: PretrainingSettings, wide: bool = False) -> None:
    """Writes the train and validation TFRecord splits of stage 1, or of stage 2
    if `wide` (skipped when present)."""
    import tfrecords
    from selfy_tf.datasets import synthetic_motion

    for split, count in (("train", settings.num_train), ("validation", settings.num_validation)):
        if os.path.exists(os.path.join(out_dir, f"{split}.manifest.json")):
            continue
        tfrecords.write_split(out_dir, split, _clips(settings, split, count, wide), labels=list(synthetic_motion.CLASS_NAMES))


def pretraining_config(model_name: str, settings: PretrainingSettings, init: str = ""):
    """The experiment config that pretrains `model_name` (a `MOTION_MODELS` entry):
    stage 1 from scratch, or stage 2 from `init` (a `model.init` value)."""
    from selfy_tf.datasets import synthetic_motion
    from trainer import configs, presets

    config = presets.get_preset("small_videos_cpu")
    config.model.name = f"{model_name}.motion"
    config.model.init = init
    config.model.num_classes = len(synthetic_motion.CLASS_NAMES)
    config.data.batch_size = settings.batch_size
    config.data.no_flip_classes = synthetic_motion.no_flip_classes()
    stage2 = bool(init)
    # Every layer is trained alike, whatever the fine-tuning preset does.
    config.optimizer = configs.OptimizerConfig(
        lr=settings.wide_learning_rate if stage2 else settings.learning_rate,
        weight_decay=settings.weight_decay,
    )
    warmup_epochs = settings.wide_warmup_epochs if stage2 else settings.warmup_epochs
    config.schedule = configs.ScheduleConfig(name="cosine", decay_epochs=(), warmup_epochs=warmup_epochs)
    config.train.epochs = settings.wide_epochs if stage2 else settings.epochs
    config.train.steps_per_epoch = None
    config.train.seed = settings.seed
    config.train.backup_every_steps = 200
    return config


def pretrain(
    work_dir: str, out_dir: str, settings: PretrainingSettings, models: Sequence[str] = MOTION_MODELS
) -> dict:
    """Writes the data, pretrains each model in two stages and saves stage 2's
    weights as `OUT/<model>_motion.weights.h5`.

    Returns:
        `{"settings": ..., "models": {model: {"val_top1": ..., "stage1_val_top1":
        ..., "weights": file name, "params": ...}}}`, also written to
        `OUT/pretraining.json`. Each top-1 is on its own stage's validation
        clips.
    """
    import keras

    from selfy_tf.run_dir import RunPaths
    from trainer.train import train

    data_dir, wide_data_dir = os.path.join(work_dir, "data"), os.path.join(work_dir, "data_wide")
    write_pretraining_data(data_dir, settings)
    write_pretraining_data(wide_data_dir, settings, wide=True)
    os.makedirs(out_dir, exist_ok=True)
    summary_path = os.path.join(out_dir, "pretraining.json")
    # Through JSON, so that the settings compare equal to those read back.
    summary = {"settings": json.loads(json.dumps(dataclasses.asdict(settings))), "models": {}}
    if os.path.exists(summary_path):
        # Models pretrained by earlier calls with the same settings stay listed.
        with open(summary_path) as stream:
            earlier = json.load(stream)
        if earlier.get("settings") == summary["settings"]:
            summary["models"] = earlier["models"]
    for model_name in models:
        run_dir = os.path.join(work_dir, "runs", model_name)
        stage1 = train(pretraining_config(model_name, settings), data_dir, run_dir, verbose=2)
        wide_run_dir = run_dir + "_wide"
        init = "keras:" + RunPaths(run_dir).last_checkpoint
        result = train(pretraining_config(model_name, settings, init), wide_data_dir, wide_run_dir, verbose=2)
        model = keras.saving.load_model(RunPaths(wide_run_dir).last_checkpoint, compile=False)
        weights = os.path.join(out_dir, f"{model_name}_motion.weights.h5")
        with atomic_path(weights, suffix=".weights.h5") as temporary:
            model.save_weights(temporary)
        summary["models"][model_name] = {
            "val_top1": result.history["val_top1"][-1],
            "stage1_val_top1": stage1.history["val_top1"][-1],
            "weights": os.path.basename(weights),
            "params": int(model.count_params()),
        }
        # After each model, so that a later model's failure loses nothing.
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="folder for the dataset and the runs")
    parser.add_argument("--out", required=True, help="folder for the weights files")
    parser.add_argument("--models", nargs="+", default=list(MOTION_MODELS), choices=MOTION_MODELS)
    parser.add_argument("--num-train", type=int, default=PretrainingSettings.num_train)
    parser.add_argument("--epochs", type=int, default=PretrainingSettings.epochs, help="stage 1's epochs")
    parser.add_argument("--wide-epochs", type=int, default=PretrainingSettings.wide_epochs, help="stage 2's epochs")
    args = parser.parse_args(argv)
    settings = PretrainingSettings(num_train=args.num_train, epochs=args.epochs, wide_epochs=args.wide_epochs)
    summary = pretrain(args.work, args.out, settings, args.models)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
