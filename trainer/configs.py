"""Experiment configs: nested dataclasses, YAML and `--set` overrides.

Every default lives in the dataclasses below and nowhere else (the CLI has
no defaults of its own). A config is resolved in this order:

    preset (`trainer.presets`, or the defaults) -> YAML files (`--config`) -> `a.b=c` overrides (`--set`)

Unknown keys are errors that name the key and the config class, and
`validate(config)` runs the cross-field checks before any work starts. The
model's architecture is not repeated here: `model.*` fields left `None` take
the defaults of the registry name `model.name` (`resolve_model(config)`,
done before a run, so that `RUN/config.yaml` holds every value).

Example:

>>> from trainer.presets import get_preset
>>> config = get_preset("tiny_cpu")
>>> config = apply_overrides(config, ["optimizer.base_lr=0.02", "train.epochs=3"])
>>> config.train.epochs
3
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from typing import Any, Iterable

import yaml

from selfy_tf import compat
from selfy_tf.eval_view import EvalView
from selfy_tf.files import atomic_write_text
from selfy_tf.run_dir import DEFAULT_STSS_XLA
from trainer.flips import FLIP_POLICIES

__all__ = [
    "DataConfig",
    "ExperimentConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_yaml",
    "resolve_model",
    "save_yaml",
    "validate",
]

SCHEDULE_NAMES = ("step", "cosine", "constant")
STRATEGY_NAMES = ("auto", "none", "mirrored", "multi_worker")
PRECISION_NAMES = ("float32", "mixed_float16", "mixed_bfloat16")
INIT_KINDS = ("imagenet", "official", "keras", "pretrained")
# `train.monitor` that keeps the last epoch as `best.keras`.
LAST_EPOCH = "last"
# Kinds that fine-tune: the classifier is new when the data's class count
# differs from the weights'.
FINE_TUNE_INIT_KINDS = ("keras", "pretrained")


@dataclasses.dataclass
class ModelConfig:
    """Which network to build (arguments of `selfy_tf.models.create_model`).

    `name` is a registered model (`selfy_tsm_r50`) or pretrained config
    (`selfy_tsm_r50.sthv1_8f`, `selfy_tf.models.list_pretrained()`). The
    architecture fields left `None` take the defaults of that name
    (`selfy_tf.models.model_args(name)`: the family's, updated by the
    config's), filled in by `resolve_model`.

    `init` is `""` (random initialisation), `"imagenet:PATH"` (an ImageNet
    ResNet checkpoint for the backbone), `"official:PATH"` (a checkpoint
    of the official PyTorch release), `"keras:PATH"` (a `.keras` model of
    the same architecture, e.g. an earlier run's `best.keras`) or
    `"pretrained"` (the weights file of the pretrained config `name`). The
    last two fine-tune: the class count comes from the data, and a
    classifier of another size starts afresh. The weights are read by
    `selfy_tf.models.load_weights_file`, as `create_model(weights=...)` reads
    them.
    """

    name: str = "selfy_tsm_r50"
    # None: the class count of the pretrained config `name`, else of the
    # data's labels.txt (a dataset that disagrees with a set count is refused).
    num_classes: int | None = None
    num_frames: int | None = None
    input_size: int | None = None
    dropout: float | None = None
    selfy_stage: str | None = None
    stss_backend: str | None = None
    width_multiplier: float | None = None
    # Resolved None: the reference SELFY widths.
    selfy_channels: int | None = None
    sync_batchnorm: bool | None = None
    # Who computes training-mode batch statistics: "exact", "tensorflow_backbone"
    # or "tensorflow" (`create_model`; docs/architecture.md).
    batch_norm_statistics: str | None = None
    # The causal model, for streaming (`selfy_tf.streaming`); offline
    # weights load into it (`init`).
    causal: bool | None = None
    init: str = ""


@dataclasses.dataclass
class DataConfig:
    """Input pipeline: splits in the data dir, batch size, augmentation."""

    train_split: str = "train"
    validation_split: str = "validation"
    # Clips per replica per step; the global batch is this times the replicas.
    batch_size: int = 8
    # Horizontal flips in training (`trainer.flips`): "auto" flips clips with
    # probability 1/2 and reads labels.txt: a class named with left/right
    # (clockwise/counterclockwise) takes its mirror class's label when
    # flipped, and is never flipped if it has no mirror class; "none" never
    # flips; "all" flips every class and keeps its label.
    flip: str = "auto"
    # Classes never flipped, whatever `flip` (SS-V1: 86, 87, 93, 94, 166, 167).
    no_flip_classes: tuple[int, ...] = ()
    # Training crop sides as fractions of the short side (the official
    # multi-scale crop, = tfrecords.augment.MULTI_SCALE_CROP_SCALES); (1.0,)
    # crops the whole short side, at a random position.
    crop_scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)
    # Views per validation video: clips x crops (1 centre crop, or 3), their
    # softmax scores averaged as `selfy eval --num-clips --num-crops` does.
    validation_num_clips: int = 1
    validation_num_crops: int = 1
    # The evaluation view (selfy_tf.eval_view): frames are resized to
    # (height, width) before the centre crop (official: 240x320); empty
    # resizes the short side to `scale_size` instead (none: input_size *
    # 256 / 224, the ratio of training's average crop).
    eval_size: tuple[int, ...] = (240, 320)
    scale_size: int | None = None
    # Training frames: 0 for TSN segments (one random frame per segment);
    # k >= 1 for consecutive frames every k frames from a random start, as a
    # stream of a causal model sees them (`model.causal`).
    frame_stride: int = 0


@dataclasses.dataclass
class OptimizerConfig:
    """SGD as the official release runs it (DESIGN.md §5).

    The learning rate is `base_lr * global_batch / base_batch_size` unless
    `lr` is set, which then is the learning rate of the global batch as is.
    """

    base_lr: float = 0.01
    base_batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    # torch-style L2: added to the gradient before momentum.
    weight_decay: float = 5e-4
    # Global-norm clip of the all-reduced gradient; 0 turns it off.
    clip_global_norm: float = 20.0
    # Official parameter groups: lr x2 and no decay for biases; the
    # classifier gets x5 (weight) and x10 (bias) on Kinetics.
    bias_lr_mult: float = 2.0
    classifier_lr_mult: float = 1.0
    classifier_bias_lr_mult: float = 2.0


@dataclasses.dataclass
class ScheduleConfig:
    """Learning-rate schedule, evaluated at every step."""

    name: str = "step"
    decay_epochs: tuple[float, ...] = (30.0, 40.0)
    decay_rate: float = 0.1
    warmup_epochs: float = 0.0
    # Cosine decays from the peak to `peak * final_lr_fraction`.
    final_lr_fraction: float = 0.0


@dataclasses.dataclass
class LossConfig:
    """Cross-entropy on one-hot labels."""

    label_smoothing: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Length of training, validation and checkpointing."""

    epochs: int = 50
    # None: as many full global batches as the train split holds.
    steps_per_epoch: int | None = None
    validation_every_epochs: int = 1
    # None: every validation clip once (the last batches are padded); a
    # number caps validation at that many steps (a quick, partial check).
    validation_steps: int | None = None
    # Metric that picks `best.keras` (higher is better); falls back to the
    # training `top1` when there is no validation split. Ties go to the
    # epoch with the lower loss (`val_loss`, or `loss` for a training
    # metric), then to the later epoch. "last" (`LAST_EPOCH`) picks nothing:
    # `best.keras` is the last epoch's model, for validation splits too
    # small to choose an epoch on.
    monitor: str = "val_top1"
    seed: int = 0
    # Backup (for resuming) every this many steps, and at each epoch end.
    backup_every_steps: int = 200
    # Scalars to TensorBoard every this many steps.
    log_every_steps: int = 50


@dataclasses.dataclass
class RuntimeConfig:
    """Devices, distribution, precision and compilation."""

    # auto: mirrored when several devices are visible, else none.
    strategy: str = "auto"
    # None: XLA on GPU/TPU, off on CPU, where XLA's convolutions are much
    # slower than oneDNN's (benchmarks/README.md, "Training").
    jit_compile: bool | None = None
    mixed_precision: str = "float32"
    steps_per_execution: int = 1
    # Compile the STSS op alone with XLA while training and evaluating (its
    # gathers are faster that way, even on CPU: benchmarks/README.md); a
    # runtime switch (`selfy_tf.ops.stss_xla`), not part of the saved model,
    # which export and TFLite conversion trace without it.
    stss_xla: bool = DEFAULT_STSS_XLA


@dataclasses.dataclass
class ExperimentConfig:
    """Everything a training run needs, saved as `RUN/config.yaml`."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    def eval_view(self) -> EvalView:
        """The run's evaluation view (one clip, one crop): the one stored in every checkpoint.

        The only place `data.eval_size` / `data.scale_size` become a view.

        Raises:
            ValueError: if `model.num_frames` or `model.input_size` is unset
                (call `resolve_model` first).
        """
        if self.model.num_frames is None or self.model.input_size is None:
            raise ValueError(
                f"The model {self.model.name!r} has no `num_frames` / `input_size` yet: pass the config "
                "through `resolve_model` first."
            )
        return EvalView(
            num_frames=self.model.num_frames,
            crop_size=self.model.input_size,
            scale_size=self.data.scale_size,
            eval_size=tuple(self.data.eval_size) or None,
        )

    def validation_view(self) -> EvalView:
        """The evaluation view with validation's clips and crops per video."""
        return self.eval_view().with_views(self.data.validation_num_clips, self.data.validation_num_crops)


# ---------------------------------------------------------------------------
# The model behind a config


def fine_tunes(config: ExperimentConfig) -> bool:
    """Whether `model.init` fine-tunes (`keras:PATH` or `pretrained`)."""
    return config.model.init.partition(":")[0] in FINE_TUNE_INIT_KINDS


def resolve_model(config: ExperimentConfig) -> ExperimentConfig:
    """A copy of `config` whose unset (`None`) `model.*` fields hold the
    defaults of `model.name` (`selfy_tf.models.model_args`).

    `model.num_classes` is taken from the pretrained config `model.name`
    only, and not when `model.init` fine-tunes; otherwise it stays `None`
    (the data's class count). Idempotent.

    Raises:
        ValueError: `model.name` is not a registered model or pretrained
            config (the message lists the valid names or tags).
    """
    from selfy_tf.models import get_pretrained_cfg, model_args

    config = copy.deepcopy(config)
    model = config.model
    try:
        defaults = model_args(model.name)
    except ValueError as error:
        raise ValueError(f"`model.name`: {error}") from None
    for name, value in defaults.items():
        if name != "num_classes" and hasattr(model, name) and getattr(model, name) is None:
            setattr(model, name, value)
    if model.num_classes is None and "." in model.name and not fine_tunes(config):
        model.num_classes = get_pretrained_cfg(model.name)["num_classes"]
    return config


# ---------------------------------------------------------------------------
# Dict / YAML conversion and overrides


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {field.name: convert(getattr(value, field.name)) for field in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [convert(item) for item in value]
        return value

    return convert(config)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Converts `value` (from YAML or a `--set` string) to `annotation`."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in arguments:
                return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise ValueError(f"`{key}` got {value!r}, expected {annotation}: {'; '.join(errors)}")
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else []
            if not isinstance(value, (list, tuple)):
                value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"`{key}` expects a list. Received: {key}={value!r}.")
        item_type = arguments[0] if arguments else Any
        return tuple(_coerce(item, item_type, key) for item in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"`{key}` expects true or false. Received: {key}={value!r}.")
    if annotation is int:
        if isinstance(value, bool):
            raise ValueError(f"`{key}` expects an integer. Received: {key}={value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"`{key}` expects an integer. Received: {key}={value!r}.")
    if annotation is float:
        if isinstance(value, bool):
            raise ValueError(f"`{key}` expects a number. Received: {key}={value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"`{key}` expects a number. Received: {key}={value!r}.") from None
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"`{key}` expects a string. Received: {key}={value!r}.")
    return value


def _set(config: Any, path: list[str], value: Any, full_key: str) -> None:
    node = config
    for depth, name in enumerate(path):
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"Unknown config key `{full_key}`: `{'.'.join(path[:depth])}` is not a section.")
        field_names = [field.name for field in dataclasses.fields(node)]
        if name not in field_names:
            raise ValueError(
                f"Unknown config key `{full_key}`: {type(node).__name__} has no field "
                f"`{name}`. Valid fields: {', '.join(field_names)}."
            )
        if depth == len(path) - 1:
            annotation = _field_types(type(node))[name]
            current = getattr(node, name)
            if dataclasses.is_dataclass(current):
                if not isinstance(value, dict):
                    raise ValueError(
                        f"`{full_key}` is a section ({type(current).__name__}); "
                        f"give its fields, e.g. `{full_key}.<field>=...`. Received: {value!r}."
                    )
                for sub_name, sub_value in value.items():
                    _set(current, [sub_name], sub_value, f"{full_key}.{sub_name}")
            else:
                setattr(node, name, _coerce(value, annotation, full_key))
            return
        node = getattr(node, name)


def config_from_dict(values: dict[str, Any], base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Applies a nested dict (e.g. loaded YAML) onto `base` (default: defaults).

    Raises:
        ValueError: a key is unknown (the message names it and the class) or a
            value has the wrong type.
    """
    config = copy.deepcopy(base) if base is not None else ExperimentConfig()
    if not isinstance(values, dict):
        raise ValueError(f"A config must be a mapping of sections. Received: {values!r}.")
    values = compat.move_model_stss_jit(values)
    for name, value in values.items():
        _set(config, [str(name)], value, str(name))
    return config


def load_yaml(path: str, base: ExperimentConfig | None = None) -> ExperimentConfig:
    """Reads a YAML config file onto `base`; keys may be partial.

    A top-level `preset: NAME` key starts from that preset instead of `base`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: the file is not a mapping or has unknown keys.
    """
    try:
        with open(path) as stream:
            values = yaml.safe_load(stream) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"Config file not found: {path}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Config file {path} must hold a mapping of sections. Received: {values!r}.")
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None:
        from trainer.presets import get_preset

        base = get_preset(str(preset))
    try:
        return config_from_dict(values, base)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def save_yaml(config: ExperimentConfig, path: str) -> None:
    """Writes the resolved config as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """Applies `section.field=value` strings in order; returns a new config.

    Values are parsed as YAML scalars/lists (`train.epochs=5`,
    `schedule.decay_epochs=[20,30]`, `model.selfy_channels=none`).

    Raises:
        ValueError: an override is not `key=value`, names an unknown key
            (the message names the key and the config class) or has a value
            of the wrong type.
    """
    config = copy.deepcopy(config)
    for override in overrides:
        if "=" not in override:
            raise ValueError(
                f"An override must look like `section.field=value`. Received: {override!r}."
            )
        key, raw_value = override.split("=", 1)
        key = key.strip()
        stripped = raw_value.strip()
        try:
            value = yaml.safe_load(stripped) if stripped else ""
        except yaml.YAMLError:
            value = stripped
        if isinstance(value, dict):
            # `a=b: c` is a string value, not a section.
            value = stripped
        _set(config, key.split("."), value, key)
    return config


def validate(config: ExperimentConfig) -> None:
    """Cross-field checks that must pass before any work starts.

    Raises:
        ValueError: naming the field, the received value and what is expected.
    """
    config = resolve_model(config)
    model, data, optimizer, schedule, train, runtime = (
        config.model,
        config.data,
        config.optimizer,
        config.schedule,
        config.train,
        config.runtime,
    )
    checks = [
        # First: other checks (`schedule.warmup_epochs`) compare with it.
        (train.epochs >= 1, f"`train.epochs` must be >= 1. Received: {train.epochs}."),
        (
            model.num_classes is None or model.num_classes >= 2,
            f"`model.num_classes` must be >= 2 or none (from labels.txt). Received: {model.num_classes}.",
        ),
        (model.num_frames >= 1, f"`model.num_frames` must be >= 1. Received: {model.num_frames}."),
        (model.input_size >= 16, f"`model.input_size` must be >= 16. Received: {model.input_size}."),
        (0.0 <= model.dropout < 1.0, f"`model.dropout` must be in [0, 1). Received: {model.dropout}."),
        (data.batch_size >= 1, f"`data.batch_size` must be >= 1. Received: {data.batch_size}."),
        (
            data.frame_stride >= 0,
            "`data.frame_stride` must be 0 (TSN segments) or >= 1 (stream sampling). "
            f"Received: {data.frame_stride}.",
        ),
        (
            data.validation_num_clips >= 1 and data.validation_num_crops in (1, 3),
            "`data.validation_num_clips` must be >= 1 and `data.validation_num_crops` 1 or 3. "
            f"Received: {data.validation_num_clips}, {data.validation_num_crops}.",
        ),
        (data.flip in FLIP_POLICIES, f"`data.flip` must be one of {FLIP_POLICIES}. Received: {data.flip!r}."),
        (
            model.num_classes is None or all(0 <= index < model.num_classes for index in data.no_flip_classes),
            f"`data.no_flip_classes` must be class indices below `model.num_classes`="
            f"{model.num_classes}. Received: {data.no_flip_classes}.",
        ),
        (
            len(data.crop_scales) >= 1 and all(0.0 < scale <= 1.0 for scale in data.crop_scales),
            "`data.crop_scales` must be one or more fractions in (0, 1]. "
            f"Received: {data.crop_scales}.",
        ),
        (
            len(data.eval_size) in (0, 2) and all(size >= model.input_size for size in data.eval_size),
            "`data.eval_size` must be empty or (height, width) no smaller than "
            f"`model.input_size`={model.input_size}. Received: {data.eval_size}.",
        ),
        (
            data.scale_size is None or (not data.eval_size and data.scale_size >= model.input_size),
            "`data.scale_size` must be none, or no smaller than `model.input_size`="
            f"{model.input_size} with an empty `data.eval_size`. Received: scale_size="
            f"{data.scale_size}, eval_size={data.eval_size}.",
        ),
        (optimizer.base_lr > 0, f"`optimizer.base_lr` must be > 0. Received: {optimizer.base_lr}."),
        (optimizer.base_batch_size >= 1, f"`optimizer.base_batch_size` must be >= 1. Received: {optimizer.base_batch_size}."),
        (optimizer.lr is None or optimizer.lr > 0, f"`optimizer.lr` must be > 0 or none. Received: {optimizer.lr}."),
        (0.0 <= optimizer.momentum < 1.0, f"`optimizer.momentum` must be in [0, 1). Received: {optimizer.momentum}."),
        (optimizer.weight_decay >= 0, f"`optimizer.weight_decay` must be >= 0. Received: {optimizer.weight_decay}."),
        (optimizer.clip_global_norm >= 0, f"`optimizer.clip_global_norm` must be >= 0 (0 = off). Received: {optimizer.clip_global_norm}."),
        (schedule.name in SCHEDULE_NAMES, f"`schedule.name` must be one of {SCHEDULE_NAMES}. Received: {schedule.name!r}."),
        (
            list(schedule.decay_epochs) == sorted(schedule.decay_epochs),
            f"`schedule.decay_epochs` must be increasing. Received: {schedule.decay_epochs}.",
        ),
        (schedule.warmup_epochs >= 0, f"`schedule.warmup_epochs` must be >= 0. Received: {schedule.warmup_epochs}."),
        (
            schedule.warmup_epochs <= train.epochs,
            f"`schedule.warmup_epochs`={schedule.warmup_epochs} must not exceed `train.epochs`={train.epochs}.",
        ),
        (0.0 <= config.loss.label_smoothing < 1.0, f"`loss.label_smoothing` must be in [0, 1). Received: {config.loss.label_smoothing}."),
        (
            train.steps_per_epoch is None or train.steps_per_epoch >= 1,
            f"`train.steps_per_epoch` must be >= 1 or none. Received: {train.steps_per_epoch}.",
        ),
        (train.validation_every_epochs >= 1, f"`train.validation_every_epochs` must be >= 1. Received: {train.validation_every_epochs}."),
        (train.backup_every_steps >= 1, f"`train.backup_every_steps` must be >= 1. Received: {train.backup_every_steps}."),
        (train.log_every_steps >= 1, f"`train.log_every_steps` must be >= 1. Received: {train.log_every_steps}."),
        (runtime.strategy in STRATEGY_NAMES, f"`runtime.strategy` must be one of {STRATEGY_NAMES}. Received: {runtime.strategy!r}."),
        (
            runtime.mixed_precision in PRECISION_NAMES,
            f"`runtime.mixed_precision` must be one of {PRECISION_NAMES}. Received: {runtime.mixed_precision!r}.",
        ),
        (runtime.steps_per_execution >= 1, f"`runtime.steps_per_execution` must be >= 1. Received: {runtime.steps_per_execution}."),
    ]
    for passed, message in checks:
        if not passed:
            raise ValueError(message)
    if model.init:
        kind, _, path = model.init.partition(":")
        if kind not in INIT_KINDS or bool(path) == (kind == "pretrained"):
            raise ValueError(
                "`model.init` must be '', 'imagenet:PATH', 'official:PATH', 'keras:PATH' or "
                f"'pretrained'. Received: {model.init!r}."
            )
        if kind == "pretrained":
            from selfy_tf.models import get_pretrained_cfg

            if "." not in model.name or not get_pretrained_cfg(model.name)["weights_file"]:
                raise ValueError(
                    "`model.init=pretrained` needs a `model.name` whose pretrained config has a "
                    f"weights file (e.g. selfy_tsm_r18.motion). Received: model.name={model.name!r}."
                )


def __getattr__(name: str) -> Any:
    # The presets moved to `trainer.presets`; their old names still work.
    return compat.moved_attribute(__name__, name)
