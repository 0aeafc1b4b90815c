"""Named experiments: registered factories of `ExperimentConfig`s.

Each preset starts from the default `ExperimentConfig` with a model (or a
pretrained config of the model registry) and changes only what differs;
the per-dataset facts sit in one function per dataset. The config classes,
YAML and `--set` overrides are `trainer.configs`.

    >>> from trainer.presets import get_preset, list_presets
    >>> get_preset("tiny_cpu").model.name
    'selfy_tsm_r18.tiny'
"""

from __future__ import annotations

from typing import Callable

from trainer.configs import LAST_EPOCH, ExperimentConfig, ModelConfig, ScheduleConfig

__all__ = ["SSV1_NO_FLIP_CLASSES", "get_preset", "list_presets", "register_preset"]

_PRESETS: dict[str, Callable[[], ExperimentConfig]] = {}

# SS-V1 classes whose label says left/right (DESIGN.md §5).
SSV1_NO_FLIP_CLASSES = (86, 87, 93, 94, 166, 167)


def register_preset(name: str) -> Callable:
    """Registers a zero-argument factory returning an `ExperimentConfig`."""

    def decorator(factory: Callable[[], ExperimentConfig]) -> Callable:
        if name in _PRESETS:
            raise ValueError(f"Preset `{name}` is already registered.")
        _PRESETS[name] = factory
        return factory

    return decorator


def list_presets() -> list[str]:
    """Names of the registered presets, sorted."""
    return sorted(_PRESETS)


def get_preset(name: str) -> ExperimentConfig:
    """Returns a fresh copy of the named preset.

    Raises:
        ValueError: `name` is not a registered preset.
    """
    if name not in _PRESETS:
        raise ValueError(
            f"Unknown preset `{name}`. Valid presets: {', '.join(list_presets())}."
        )
    return _PRESETS[name]()


# The presets name a pretrained config of the model registry
# (`selfy_tf.models.list_pretrained()`), which holds the architecture: its
# class count, frames, input size and widths.


def _something_something_v1(config: ExperimentConfig) -> ExperimentConfig:
    config.data.no_flip_classes = SSV1_NO_FLIP_CLASSES
    return config


def _something_something_v2(config: ExperimentConfig) -> ExperimentConfig:
    # The same left/right classes as V1, renumbered by the V2 label file:
    # `data.flip=auto` finds them by name in labels.txt.
    config.data.no_flip_classes = ()
    return config


def _kinetics400(config: ExperimentConfig) -> ExperimentConfig:
    # The official optimizer policy gives the classifier x5 / x10 on Kinetics.
    config.optimizer.classifier_lr_mult = 5.0
    config.optimizer.classifier_bias_lr_mult = 10.0
    return config


def _with_model(name: str) -> ExperimentConfig:
    """The default experiment with the model (or pretrained config) `name`."""
    return ExperimentConfig(model=ModelConfig(name=name))


@register_preset("ssv1_selfy_r50_8f")
def ssv1_selfy_r50_8f() -> ExperimentConfig:
    """The paper's SS-V1 recipe, 8 frames (52.5 top-1)."""
    return _something_something_v1(_with_model("selfy_tsm_r50.sthv1_8f"))


@register_preset("ssv1_selfy_r50_16f")
def ssv1_selfy_r50_16f() -> ExperimentConfig:
    """The paper's SS-V1 recipe, 16 frames (54.3 top-1)."""
    return _something_something_v1(_with_model("selfy_tsm_r50.sthv1_16f"))


@register_preset("ssv2_selfy_r50_8f")
def ssv2_selfy_r50_8f() -> ExperimentConfig:
    """The paper's SS-V2 recipe, 8 frames (64.5 top-1)."""
    return _something_something_v2(_with_model("selfy_tsm_r50.sthv2_8f"))


@register_preset("kinetics_selfy_r50_8f")
def kinetics_selfy_r50_8f() -> ExperimentConfig:
    """Kinetics-400, 8 frames, with the official Kinetics lr multipliers."""
    config = _kinetics400(_with_model("selfy_tsm_r50.kinetics400_8f"))
    # Kinetics has no left/right classes: flipping is always fine.
    config.data.no_flip_classes = ()
    return config


@register_preset("tiny_cpu")
def tiny_cpu() -> ExperimentConfig:
    """A SELFY TSM-R18 small enough to train for a few steps on a laptop CPU.

    Its classes come from the data. A path check and the tests' model: from
    random weights it memorises a few dozen clips rather than learning their
    motion; for your own videos use `small_videos_cpu`.
    """
    config = _with_model("selfy_tsm_r18.tiny")
    config.data.batch_size = 4
    # Evaluation resizes the short side to `scale_size` (input_size * 256 / 224)
    # before the centre crop, whatever the stored frame size: the view
    # training's multi-scale crops cover. With the cosine decay from 0.05 it
    # learns small user data in a few epochs, where a constant 0.01 barely
    # left chance (benchmarks/README.md, "tiny_cpu on small data").
    config.data.eval_size = ()
    config.optimizer.lr = 0.05
    config.schedule = ScheduleConfig(name="cosine", decay_epochs=())
    config.train.epochs = 3
    config.train.backup_every_steps = 5
    config.train.log_every_steps = 5
    return config


@register_preset("small_videos_cpu")
def small_videos_cpu() -> ExperimentConfig:
    """Fine-tunes a small motion-pretrained SELFY on a user's own few videos, on a CPU.

    The model is `selfy_tsm_r18.motion` (width 1/4, 8 frames of 48x48, the
    SELFY block after res2 so that its STSS grid holds the window), whose
    shipped weights were pretrained on the package's synthetic motion
    classes (`trainer.motion_pretraining`); only the classifier starts
    afresh. An epoch is a fixed number of steps, not a pass over the data,
    so a set of a few dozen clips still gets enough of them (300 steps of
    16 clips, about two to three minutes on 2 CPU cores), and `best.keras`
    is the last epoch's model. Figures: benchmarks/README.md, "Own videos".
    """
    config = _with_model("selfy_tsm_r18.motion")
    config.model.init = "pretrained"
    config.data.batch_size = 16
    # Evaluation resizes the short side to input_size * 256 / 224 before the
    # centre crop, whatever the stored frame size (training's multi-scale
    # crops cover that view).
    config.data.eval_size = ()
    # The pretrained layers move gently (lr 0.002) while the new classifier
    # learns at 0.02 (its bias at 0.04): fine-tuning them as fast as the
    # classifier on a few dozen clips loses some of what pretraining taught.
    config.optimizer.lr = 0.002
    config.optimizer.classifier_lr_mult = 10.0
    config.optimizer.classifier_bias_lr_mult = 20.0
    config.optimizer.weight_decay = 1e-4
    config.schedule = ScheduleConfig(name="cosine", decay_epochs=())
    config.train.epochs = 15
    config.train.steps_per_epoch = 20
    # A few dozen clips leave a dozen or so for validation: too few to pick
    # an epoch on (one clip is 7 points), while the cosine decay ends on
    # its most trained model (benchmarks/README.md, "Own videos").
    config.train.monitor = LAST_EPOCH
    config.train.backup_every_steps = 20
    config.train.log_every_steps = 10
    return config
