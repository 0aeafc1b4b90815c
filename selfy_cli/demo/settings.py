"""Settings of `selfy demo`: the full run and the quick check."""

from __future__ import annotations

import dataclasses

from selfy_tf.datasets.synthetic_motion import CLASS_NAMES

DEMO_MODELS: tuple[str, ...] = ("tsn_r18", "tsm_r18", "selfy_tsm_r18")


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Everything `run_demo` does, in one place.

    Args:
        num_train: training clips of the synthetic dataset.
        num_validation: validation clips (a multiple of `batch_size`, so
            that validation sees every clip).
        frame_size: frame side in pixels (stored and model input).
        num_frames: frames per clip and model input.
        classes: synthetic motion classes to use.
        models: model zoo names to train and compare.
        causal_model: a model zoo name trained once more as a causal model
            (`model.causal=true`) on the frames a stream sees
            (`data.frame_stride=1`), with the first seed only, for the early
            recognition plot (`selfy_cli.demo.early_recognition`); None: none.
        seeds: training seeds (model initialisation and data order); the
            dataset is the same for all.
        epochs: training epochs per model.
        batch_size: clips per step.
        learning_rate: peak learning rate (SGD, Nesterov momentum 0.9).
        warmup_epochs: linear warm-up before the cosine decay.
        weight_decay: L2 weight decay.
        width_multiplier: backbone width factor (1.0 = ResNet-18).
        selfy_channels: SELFY block hidden width (other widths scale).
        selfy_stage: backbone stage the SELFY block follows; at small frame
            sizes `"res2"` keeps its STSS map large enough (8x8 cells at
            32x32 frames) to show motion.
        dropout: dropout before the classifier.
        dataset_seed: seed of the synthetic dataset.
        num_visualized_clips: validation clips shown with STSS maps, motion
            field and Grad-CAM in the report.
        via: how the dataset is written: `"tfrecords"` (straight to
            TFRecords) or `"videos"` (MP4 files, then the folders converter).
        quick: a path check (`quick_settings`): the report says its
            accuracies compare nothing instead of testing the claims.
    """

    num_train: int = 1500
    num_validation: int = 400
    frame_size: int = 32
    num_frames: int = 8
    classes: tuple[str, ...] = CLASS_NAMES
    models: tuple[str, ...] = DEMO_MODELS
    causal_model: str | None = "selfy_tsm_r18"
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 0.1
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-4
    width_multiplier: float = 0.25
    selfy_channels: int = 16
    selfy_stage: str = "res2"
    dropout: float = 0.2
    dataset_seed: int = 0
    num_visualized_clips: int = 3
    via: str = "tfrecords"
    quick: bool = False

    def with_num_seeds(self, num_seeds: int) -> "DemoSettings":
        """A copy that trains with seeds `0 .. num_seeds - 1`.

        Raises:
            ValueError: if `num_seeds` is below 1.
        """
        if int(num_seeds) < 1:
            raise ValueError(f"`num_seeds` must be at least 1. Received: num_seeds={num_seeds!r}.")
        return dataclasses.replace(self, seeds=tuple(range(int(num_seeds))))


def full_settings() -> DemoSettings:
    """The full demo: three models, three seeds and a causal SELFY (first seed), about 15 minutes on 2 CPU cores."""
    return DemoSettings()


def quick_settings() -> DemoSettings:
    """A path check in well under 3 minutes: tiny data, one epoch, one seed.

    Its accuracies mean nothing; it only shows that every step runs and the
    report is written.
    """
    return DemoSettings(
        num_train=40,
        num_validation=20,
        frame_size=32,
        num_frames=4,
        seeds=(0,),
        epochs=1,
        batch_size=10,
        learning_rate=0.05,
        warmup_epochs=0.0,
        width_multiplier=0.125,
        selfy_channels=8,
        dropout=0.0,
        num_visualized_clips=1,
        quick=True,
    )
