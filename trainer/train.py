"""`train(config, data_dir, run_dir)`: the paper's recipe with Keras `model.fit`.

Runs on TensorFlow (`tf.distribute` strategies) and on JAX
(`keras.distribution.DataParallel`), see `trainer.distribution`; the input is
the TFRecord pipeline (tf.data, also under JAX) or, without TensorFlow,
in-memory clips (`trainer.numpy_data`).

One `fit` call per epoch. The training data of epoch `e` is a deterministic
function of `(train.seed, e)`, which is what makes mid-epoch resume exact:
after a restart the interrupted epoch's pipeline is rebuilt and the batches
already trained on are skipped (`Dataset.skip`), then training continues
with the restored weights, optimizer state and running metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Sequence

import keras

from selfy_tf.files import atomic_path, atomic_write_text
from selfy_tf.layers import SELFYBlock
from selfy_tf.models import stss_grid_problem
from selfy_tf.ops import stss_xla
from selfy_tf.run_dir import RunPaths, read_labels, save_model, write_labels
from tfrecords.split import labels_path
from trainer import callbacks as callbacks_lib
from trainer import configs
from trainer import distribution as distribution_lib
from trainer.flips import FlipPlan, plan_flips
from trainer.optimizer import TorchSGD, group_policies, parameter_groups
from trainer.schedules import make_schedule, scaled_learning_rate

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

logger = logging.getLogger(__name__)

__all__ = ["DataInfo", "TrainResult", "build_model", "compile_for_training", "inspect_data_dir", "resolve_jit_compile", "train"]


@dataclasses.dataclass
class DataInfo:
    """What the trainer needs to know about a data directory."""

    data_dir: str
    labels: list[str]
    train_files: list[str]
    num_train_examples: int
    validation_files: list[str]
    num_validation_examples: int
    # In-memory clips (`trainer.numpy_data.ClipArrays`) instead of shards.
    arrays: Any = None

    @property
    def has_validation(self) -> bool:
        return bool(self.validation_files) or (self.arrays is not None and self.num_validation_examples > 0)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        run_dir: the run directory.
        history: `{metric: [value per finished epoch]}` (loss, top1, top5,
            val_*, lr, clips_per_sec), including epochs of earlier runs that
            this one resumed.
        epochs_completed: finished epochs.
        global_step: optimizer steps taken.
        best_checkpoint / last_checkpoint: paths of the `.keras` files.
        best_metric: `{"name": ..., "value": ..., "epoch": ...}`: the metric
            that chose `best.keras`, its value and the epoch (1-based) whose
            weights `best.keras` holds. Ties go to the lower loss (`val_loss`,
            or `loss` for a training metric), then to the later epoch.
        resumed_from: `{"epoch": e, "step_in_epoch": s}` when this call
            resumed from a backup, else None.
        global_batch_size / num_replicas: the distribution used.
        warnings: what the run could not do as asked (e.g. no validation
            split), also logged.
        backend: the Keras backend that trained ("tensorflow", "jax").
    """

    run_dir: str
    history: dict[str, list[float]]
    epochs_completed: int
    global_step: int
    best_checkpoint: str
    last_checkpoint: str
    best_metric: dict[str, Any]
    resumed_from: dict[str, int] | None
    global_batch_size: int
    num_replicas: int
    warnings: list[str] = dataclasses.field(default_factory=list)
    backend: str = "tensorflow"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_jit_compile(setting: bool | None) -> bool:
    """XLA for `model.fit`: the explicit setting, else on for GPU/TPU and off on CPU
    (TensorFlow), always on under JAX.

    Keras's `jit_compile="auto"` silently turns XLA off on CPU and under
    distribution strategies; we choose from measurement instead: on CPU XLA's
    convolutions make a SELFY block's training step much slower than graph
    mode (benchmarks/README.md), while on GPUs XLA is usually faster.
    """
    if setting is not None:
        return bool(setting)
    if keras.backend.backend() == "jax":
        # Without jit JAX runs op by op; compiled is its only fast mode.
        return True
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def inspect_data_dir(data_dir: str, config: configs.ExperimentConfig, require_train: bool = True) -> DataInfo:
    """Checks that `data_dir` holds data that fits the model; counts examples.

    Raises:
        FileNotFoundError: `data_dir` or its `labels.txt` does not exist.
        ValueError: no training shards; class count differs from
            `model.num_classes`; every clip has fewer frames than
            `model.num_frames`.
    """
    from tfrecords.split import open_split

    config = configs.resolve_model(config)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"Data directory not found: {data_dir}")
    labels = read_labels(data_dir)
    if config.model.num_classes is not None and len(labels) != config.model.num_classes:
        raise ValueError(
            f"{labels_path(data_dir)} lists {len(labels)} classes but "
            f"`model.num_classes`={config.model.num_classes}. Set "
            f"`--set model.num_classes={len(labels)}` or use the matching data directory."
        )
    splits = {}
    for split in (config.data.train_split, config.data.validation_split):
        opened = open_split(data_dir, split, required=False)
        frames = opened.frames
        if opened.files:
            if frames.get("max", config.model.num_frames) < config.model.num_frames:
                raise ValueError(
                    f"The {split} clips in {data_dir} have at most {frames['max']} frames but "
                    f"`model.num_frames`={config.model.num_frames}: every clip would repeat frames. "
                    "Convert the videos with more frames or lower `model.num_frames`."
                )
            if frames.get("min", config.model.num_frames) < config.model.num_frames:
                logger.warning(
                    "Some %s clips have only %d frames (< num_frames=%d): their frames repeat.",
                    split,
                    frames["min"],
                    config.model.num_frames,
                )
        splits[split] = (opened.files, opened.num_examples)
    train_files, num_train = splits[config.data.train_split]
    if require_train and (not train_files or num_train == 0):
        raise ValueError(
            f"No training clips in {data_dir}: expected shards "
            f"'{config.data.train_split}-*.tfrecord' (written by `selfy tfrecords build`)."
        )
    validation_files, num_validation = splits[config.data.validation_split]
    return DataInfo(data_dir, labels, train_files, num_train, validation_files, num_validation)


def inspect_numpy_source(source: str, config: configs.ExperimentConfig) -> DataInfo:
    """`inspect_data_dir` for in-memory clips (`synthetic:...` or `.npz`, see `trainer.numpy_data`)."""
    from trainer.numpy_data import load_clip_arrays

    config = configs.resolve_model(config)
    arrays = load_clip_arrays(source, config.model.num_frames)
    if config.model.num_classes is not None and len(arrays.labels) != config.model.num_classes:
        raise ValueError(
            f"{source} has {len(arrays.labels)} classes but `model.num_classes`={config.model.num_classes}. "
            f"Set `--set model.num_classes={len(arrays.labels)}`."
        )
    num_validation = 0 if arrays.validation_labels is None else len(arrays.validation_labels)
    return DataInfo(source, arrays.labels, [], len(arrays.train_labels), [], num_validation, arrays=arrays)


def with_data_classes(config: configs.ExperimentConfig, data: DataInfo) -> configs.ExperimentConfig:
    """`config` with `model.num_classes` set from the data's labels.txt when unset.

    Raises:
        ValueError: `data.no_flip_classes` names a class the data lacks.
    """
    config = configs.resolve_model(config)
    if config.model.num_classes is not None:
        return config
    config.model.num_classes = len(data.labels)
    logger.info(
        "model.num_classes=%d, from %s.", config.model.num_classes, labels_path(data.data_dir)
    )
    configs.validate(config)
    return config


def build_model(config: configs.ExperimentConfig) -> keras.Model:
    """Creates the configured model and loads its initial weights (`model.init`).

    The SELFY options (`selfy_stage`, `stss_*`, `selfy_channels`) are passed to
    every family: TSN and TSM builders accept and ignore them.
    """
    from selfy_tf.models import create_model, load_weights_file

    model_config = configs.resolve_model(config).model
    model = create_model(
        model_config.name,
        num_classes=model_config.num_classes,
        num_frames=model_config.num_frames,
        input_size=model_config.input_size,
        dropout=model_config.dropout,
        selfy_stage=model_config.selfy_stage,
        stss_backend=model_config.stss_backend,
        width_multiplier=model_config.width_multiplier,
        selfy_channels=model_config.selfy_channels,
        sync_batchnorm=model_config.sync_batchnorm,
        batch_norm_statistics=model_config.batch_norm_statistics,
        causal=model_config.causal,
    )
    if not model_config.init:
        logger.info("Initialised %s randomly (no `model.init`).", model.name)
        return model
    load_weights_file(model, model_config.init, name=model_config.name, argument="model.init")
    return model


def _peak_learning_rate(config: configs.ExperimentConfig, global_batch_size: int) -> float:
    if config.optimizer.lr is not None:
        return float(config.optimizer.lr)
    return scaled_learning_rate(config.optimizer.base_lr, config.optimizer.base_batch_size, global_batch_size)


def compile_for_training(model: keras.Model, config: configs.ExperimentConfig, schedule, jit_compile: bool) -> None:
    """Compiles `model` with the recipe's optimizer (TorchSGD + parameter groups), loss and metrics."""
    optimizer_config = config.optimizer
    groups = parameter_groups(
        model,
        bias_lr_mult=optimizer_config.bias_lr_mult,
        classifier_lr_mult=optimizer_config.classifier_lr_mult,
        classifier_bias_lr_mult=optimizer_config.classifier_bias_lr_mult,
    )
    for name, group in groups.items():
        if group["paths"]:
            logger.debug(
                "Parameter group %s: %d variables, lr x%g, decay x%g.",
                name,
                len(group["paths"]),
                group["lr_mult"],
                group["decay_mult"],
            )
    optimizer = TorchSGD(
        learning_rate=schedule,
        momentum=optimizer_config.momentum,
        nesterov=optimizer_config.nesterov,
        weight_decay=optimizer_config.weight_decay,
        clip_global_norm=optimizer_config.clip_global_norm or None,
        variable_policies=group_policies(groups),
    )
    if config.runtime.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    top_k = min(5, config.model.num_classes)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.loss.label_smoothing),
        # Weighted, so validation's padding clips (weight 0) count for
        # nothing; training batches carry no weights.
        weighted_metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=top_k, name="top5"),
        ],
        jit_compile=jit_compile,
        steps_per_execution=config.runtime.steps_per_execution,
    )
    optimizer.build(model.trainable_variables)


def _epoch_seed(config: configs.ExperimentConfig, epoch: int) -> int:
    return int(config.train.seed) * 100_003 + int(epoch)


def _one_hot(num_classes: int):
    import tensorflow as tf

    def convert(frames, label):
        return frames, tf.one_hot(label, num_classes, dtype=tf.float32)

    return convert


def _flip_plan(config: configs.ExperimentConfig, data: DataInfo) -> FlipPlan:
    return plan_flips(data.labels, config.data.flip, config.data.no_flip_classes)


def _train_dataset(strategy, config, data: DataInfo, epoch: int, skip_steps: int, num_steps: int, global_batch: int):
    from tfrecords import make_dataset

    flips = _flip_plan(config, data)

    def dataset_fn(input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        # Without an input context (no strategy) one pipeline makes global batches.
        replicas_per_pipeline = (
            1
            if input_context is None
            else max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
        )
        dataset = make_dataset(
            data.train_files,
            training=True,
            num_frames=config.model.num_frames,
            batch_size=global_batch,
            crop_size=config.model.input_size,
            seed=_epoch_seed(config, epoch),
            no_flip_classes=flips.no_flip_classes,
            flip_label_map=flips.flip_label_map,
            scales=config.data.crop_scales,
            frame_stride=config.data.frame_stride,
            input_context=input_context,
            repeat=True,
            num_classes=config.model.num_classes,
        )
        dataset = dataset.map(_one_hot(config.model.num_classes))
        # Batches of this epoch already trained on before an interruption.
        if skip_steps:
            dataset = dataset.skip(skip_steps * replicas_per_pipeline)
        return dataset.take(num_steps * replicas_per_pipeline)

    return _distribute(strategy, dataset_fn)


def _validation_dataset(strategy, config, data: DataInfo, global_batch: int, num_steps: int, weight: float):
    """Every validation clip once, in full batches padded with zero-weight clips
    (`make_dataset(pad_batches=True)`); real clips weigh `weight`."""
    from tfrecords import make_dataset

    view = config.validation_view()
    num_classes = config.model.num_classes

    def dataset_fn(input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
        import tensorflow as tf

        replicas_per_pipeline = (
            1
            if input_context is None
            else max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
        )
        dataset = make_dataset(
            data.validation_files,
            training=False,
            batch_size=global_batch,
            eval_view=view,
            input_context=input_context,
            # Every replica and worker runs the same number of steps.
            pad_batches=True,
            num_classes=num_classes,
        )

        def convert(frames, label, clip_weight):
            return frames, tf.one_hot(label, num_classes, dtype=tf.float32), clip_weight * weight

        return dataset.map(convert).take(num_steps * replicas_per_pipeline)

    return _distribute(strategy, dataset_fn)


def _distribute(strategy: tf.distribute.Strategy | None, dataset_fn):
    """`dataset_fn` per input pipeline of `strategy`, or called once (no strategy: JAX)."""
    if strategy is None:
        return dataset_fn(None)
    return strategy.distribute_datasets_from_function(dataset_fn)


def _check_resumable(paths: RunPaths, config: configs.ExperimentConfig) -> None:
    """Refuses to resume a run directory with a different config."""
    if not os.path.exists(paths.config):
        return
    saved = configs.config_to_dict(configs.load_yaml(paths.config))
    current = configs.config_to_dict(config)
    differences = []
    for section, fields in current.items():
        for name, value in fields.items():
            if saved.get(section, {}).get(name) != value:
                differences.append(f"{section}.{name}: {saved.get(section, {}).get(name)!r} -> {value!r}")
    # Changing the length of the run is allowed (e.g. to extend it).
    differences = [item for item in differences if not item.startswith("train.epochs:")]
    # Runs of earlier versions saved a preset's bare model name; the tag
    # names the same architecture when every other model field is equal.
    saved_name = saved.get("model", {}).get("name")
    if saved_name == config.model.name.split(".", 1)[0]:
        differences = [item for item in differences if not item.startswith("model.name:")]
    if differences:
        raise ValueError(
            f"{paths.root} holds a run with a different config ({'; '.join(differences)}). "
            "Resume with the same config, or choose another `--out` directory."
        )


def _progress_bar(verbose: int | str) -> bool:
    if verbose == "auto":
        return sys.stderr.isatty()
    return int(verbose) == 1


def _best_record(best: Any) -> dict[str, Any] | None:
    """The best score of a backup: `{"value", "loss", "epoch"}` (a bare value in older backups)."""
    if best is None or isinstance(best, dict):
        return best
    return {"value": float(best), "loss": None, "epoch": None}


def _is_better(candidate: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether an epoch's `{"value", "loss"}` beats the best so far.

    A higher monitored value wins. On a tie the lower loss wins: top-1 on a
    small validation split ties often (early epochs reach the same count of
    right answers), and the loss still tells the more confident model apart.
    On a tie of both, the later epoch, which trained longer, wins.
    """
    if candidate["value"] is None:
        return False
    if best is None or best["value"] is None:
        return True
    if candidate["value"] != best["value"]:
        return candidate["value"] > best["value"]
    if candidate["loss"] is not None and best["loss"] is not None and candidate["loss"] != best["loss"]:
        return candidate["loss"] < best["loss"]
    return True


def _update_best(best: dict[str, Any] | None, score: dict[str, Any], keep_last: bool = False) -> dict[str, Any]:
    """The epoch `best.keras` holds once `score`'s epoch (`{"value", "loss",
    "epoch"}`) is done: `score` if it is better (`_is_better`), or always
    with `keep_last` (`train.monitor=last`). Until an epoch has the
    monitored metric (validation every few epochs), the first epoch,
    recorded without a value."""
    if keep_last or _is_better(score, best) or best is None:
        return score
    return best


@dataclasses.dataclass
class _PreparedRun:
    """What `_prepare_run` settled before anything is built.

    `output` is where logs and checkpoints go: the run directory on the chief,
    a scratch directory (`scratch`, removed at the end) on other workers.
    """

    config: configs.ExperimentConfig
    data: DataInfo
    paths: RunPaths
    output: RunPaths
    backup_dir: str
    chief: bool
    scratch: str | None
    num_replicas: int
    global_batch: int
    steps_per_epoch: int
    validation_steps: int
    # Weight of a real validation clip (padding weighs 0), see `_validation_plan`.
    validation_weight: float
    flips: FlipPlan
    warnings: list[str]


@dataclasses.dataclass
class _Inputs:
    """The input pipelines of a run: `train(epoch, skip_steps, num_steps)` and validation."""

    train: Callable[[int, int, int], Any]
    validation: Any | None


def _prepare_run(
    config: configs.ExperimentConfig, data_dir: str, run_dir: str, replicas
) -> _PreparedRun:
    """Step 1: checks the data, sizes the batches and steps, refuses a resume
    with another config, creates the run directory with its config and labels."""
    from trainer.numpy_data import is_numpy_source

    # The model's unset fields from its registry name: the run directory's
    # config.yaml holds every value.
    config = configs.resolve_model(config)
    if is_numpy_source(data_dir):
        data = inspect_numpy_source(data_dir, config)
    else:
        data = inspect_data_dir(data_dir, config)
    config = with_data_classes(config, data)
    num_replicas = replicas.num_replicas
    global_batch = config.data.batch_size * num_replicas
    steps_per_epoch = config.train.steps_per_epoch or data.num_train_examples // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"The train split of {data_dir} has {data.num_train_examples} clips, fewer than one "
            f"global batch ({config.data.batch_size} per replica x {num_replicas} replicas). "
            "Lower `data.batch_size` or set `train.steps_per_epoch`."
        )
    flips = _flip_plan(config, data)
    logger.info("%s", flips.describe())
    warnings = []
    if not data.has_validation:
        warnings.append(
            f"no validation split in {data_dir} (no '{config.data.validation_split}-*.tfrecord'): the run "
            "reports training accuracy only, and best.keras is chosen by it. Build one with "
            "`selfy tfrecords build ... --validation-fraction 0.2`."
        )
        logger.warning("%s", warnings[-1])
    chief, worker = replicas.chief, replicas.worker
    paths = RunPaths(os.path.abspath(run_dir))
    # Non-chief workers keep their own backup (to resume) and write logs
    # and checkpoints to a temporary directory that is removed at the end.
    scratch = None if chief else tempfile.mkdtemp(prefix=f"selfy-worker{worker}-")
    output = paths if chief else RunPaths(scratch)
    backup_dir = paths.backup if chief else os.path.join(paths.backup, f"worker-{worker}")
    if callbacks_lib.read_backup_state(backup_dir) is not None:
        _check_resumable(paths, config)
    output.make_dirs()
    os.makedirs(backup_dir, exist_ok=True)
    if chief:
        configs.save_yaml(config, paths.config)
        write_labels(paths.labels, data.labels)
    validation_steps, validation_weight = _validation_plan(config, data, replicas, global_batch)
    return _PreparedRun(
        config=config,
        data=data,
        paths=paths,
        output=output,
        backup_dir=backup_dir,
        chief=chief,
        scratch=scratch,
        num_replicas=num_replicas,
        global_batch=global_batch,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        validation_weight=validation_weight,
        flips=flips,
        warnings=warnings,
    )


def _validation_plan(config: configs.ExperimentConfig, data: DataInfo, replicas, global_batch: int) -> tuple[int, float]:
    """`(validation steps, weight of a real clip)`; `(0, 0.0)` without validation.

    Validation scores every clip once: the last batches are filled with
    padding clips of weight 0, so every replica and worker runs the same
    number of full steps. Keras averages the loss over all clips of a batch,
    padding included (`Mean` of the per-batch losses, each the weighted sum
    over the batch size), so real clips weigh `padded clips / real clips`:
    then the loss is the mean over the real clips, and the accuracies (sums
    of weights x hits over sums of weights) are unchanged. Keras weighs
    masked entries the same way (`keras.losses.loss.apply_mask`).
    """
    if not data.has_validation:
        return 0, 0.0
    if data.arrays is not None:
        steps = -(-data.num_validation_examples // global_batch)
    else:
        from tfrecords.dataset import padded_eval_steps

        steps = padded_eval_steps(data.validation_files, global_batch, replicas.num_input_pipelines, replicas.num_replicas)
    if config.train.validation_steps and config.train.validation_steps < steps:
        # A partial check: the first steps' clips, weighed alike.
        return int(config.train.validation_steps), 1.0
    return steps, steps * global_batch / data.num_validation_examples


def _build_inputs(run: _PreparedRun, replicas) -> _Inputs:
    """Step 2: the training pipeline of any epoch, and the validation pipeline."""
    config, data = run.config, run.data
    if data.arrays is not None:
        return _numpy_inputs(run)

    # None off TensorFlow: one pipeline of global batches, split by Keras.
    strategy = getattr(replicas, "strategy", None)

    def train_dataset(epoch: int, skip_steps: int, num_steps: int):
        return _train_dataset(strategy, config, data, epoch, skip_steps, num_steps, run.global_batch)

    validation = None
    if run.validation_steps:
        validation = _validation_dataset(
            strategy, config, data, run.global_batch, run.validation_steps, run.validation_weight
        )
    return _Inputs(train=train_dataset, validation=validation)


def _numpy_inputs(run: _PreparedRun) -> _Inputs:
    """In-memory clips as `PyDataset`s of global batches (Keras splits them over devices)."""
    from trainer.numpy_data import EvalBatches, TrainBatches

    config, arrays = run.config, run.data.arrays

    def train_dataset(epoch: int, skip_steps: int, num_steps: int):
        return TrainBatches(
            arrays.train_frames,
            arrays.train_labels,
            config.model.num_classes,
            run.global_batch,
            seed=_epoch_seed(config, epoch),
            skip_steps=skip_steps,
            num_steps=num_steps,
            num_frames=config.model.num_frames,
            crop_size=config.model.input_size,
            scales=config.data.crop_scales,
            no_flip_classes=run.flips.no_flip_classes,
            flip_label_map=run.flips.flip_label_map,
            frame_stride=config.data.frame_stride,
        )

    validation = None
    if run.validation_steps:
        validation = EvalBatches(
            arrays.validation_frames,
            arrays.validation_labels,
            config.model.num_classes,
            run.global_batch,
            run.validation_steps,
            config.validation_view(),
            weight=run.validation_weight,
        )
    return _Inputs(train=train_dataset, validation=validation)


def _build_and_compile(run: _PreparedRun, replicas):
    """Step 3: the model, its initial weights, optimizer and schedule, compiled
    in the replicas' scope with every variable built.

    Returns `(model, fit_model, schedule)`: `fit_model` is what `fit` runs,
    `model` itself, or a `ViewAveraging` around it when validation scores
    several views per video. The global dtype policy must already be
    `runtime.mixed_precision`.
    """
    config = run.config
    peak_lr = _peak_learning_rate(config, run.global_batch)
    schedule = make_schedule(config.schedule, peak_lr, run.steps_per_epoch, config.train.epochs)
    jit_compile = resolve_jit_compile(config.runtime.jit_compile)
    logger.info(
        "Training %s: %d train clips (%d steps of %d = %d replicas x %d), %d validation clips, "
        "lr %.5g, XLA %s, precision %s.",
        config.model.name,
        run.data.num_train_examples,
        run.steps_per_epoch,
        run.global_batch,
        run.num_replicas,
        config.data.batch_size,
        run.data.num_validation_examples,
        peak_lr,
        "on" if jit_compile else "off",
        config.runtime.mixed_precision,
    )
    # Same seed, same initial weights (and dropout masks) on every worker
    # and in every restart.
    keras.utils.set_random_seed(int(config.train.seed))
    num_views = config.validation_view().num_views
    with replicas.build_scope():
        model = build_model(config)
        fit_model = model
        if num_views > 1 and run.validation_steps:
            from trainer.view_averaging import ViewAveraging

            fit_model = ViewAveraging(model, num_views, name=f"{model.name}_views")
        compile_for_training(fit_model, config, schedule, jit_compile)
        # Build metric variables now (Keras would on the first step) so a
        # mid-epoch backup's running metrics can be restored; see
        # `trainer.strategy.prepare_model_for_fit` for why `fit` must not
        # build from data.
        size = config.model.input_size
        replicas.prepare_model_for_fit(fit_model, (config.model.num_frames, size, size, 3), config.model.num_classes)
    if any(isinstance(layer, SELFYBlock) for layer in model.layers):
        # create_model logged it when building; the summary repeats it.
        problem = stss_grid_problem(size, config.model.selfy_stage, config.model.name)
        if problem:
            run.warnings.append(problem)
    return model, fit_model, schedule


def _restore_state(run: _PreparedRun, model: keras.Model) -> tuple[dict[str, Any], dict[str, int] | None]:
    """The progress to continue from (restoring the backup into `model`), and
    `{"epoch", "step_in_epoch"}` when it came from a backup."""
    state = callbacks_lib.load_backup(run.backup_dir, model)
    if state is None:
        return {"epoch": 0, "step_in_epoch": 0, "history": {}, "best": None, "finished": False}, None
    logger.info(
        "Resuming from %s: epoch %d, step %d of %d.",
        run.backup_dir,
        state["epoch"] + 1,
        state["step_in_epoch"],
        run.steps_per_epoch,
    )
    return state, {"epoch": state["epoch"], "step_in_epoch": state["step_in_epoch"]}


def _run_epochs(
    run: _PreparedRun,
    inputs: _Inputs,
    model: keras.Model,
    fit_model: keras.Model,
    schedule,
    state: dict[str, Any],
    monitor: str,
    progress_bar: bool,
    extra_callbacks: Sequence[keras.callbacks.Callback],
) -> dict[str, list[float]]:
    """Step 4: one `fit` of `fit_model` per epoch from `state` on, with
    validation, checkpoints (of `model`), backups and history; updates `state`
    and returns the history. Each epoch ends with one log line; `progress_bar`
    adds a live bar within it."""
    config, output, backup_dir = run.config, run.output, run.backup_dir
    # The tie-breaker of `monitor`: the loss of the same split.
    monitor_loss = "val_loss" if monitor.startswith("val_") else "loss"
    state["best"] = _best_record(state["best"])
    steps_per_epoch = run.steps_per_epoch
    training_logger = (
        callbacks_lib.TrainingLogger(
            output.logs, run.global_batch, config.train.log_every_steps, lambda step: schedule(step)
        )
        if run.chief
        else None
    )
    history: dict[str, list[float]] = {key: list(values) for key, values in state["history"].items()}
    for epoch in range(state["epoch"], config.train.epochs):
        first_step = state["step_in_epoch"] if epoch == state["epoch"] else 0
        resume_metrics = backup_dir if first_step else None
        dataset = inputs.train(epoch, first_step, steps_per_epoch - first_step)
        validate_now = inputs.validation is not None and (
            (epoch + 1) % config.train.validation_every_epochs == 0 or epoch + 1 == config.train.epochs
        )
        epoch_callbacks = [
            callbacks_lib.Backup(
                backup_dir,
                config.train.backup_every_steps,
                steps_per_epoch,
                epoch,
                first_step,
                {key: value for key, value in state.items() if key not in ("epoch", "step_in_epoch")},
                restore_metric_state=resume_metrics,
            ),
            *([training_logger] if training_logger else []),
            *extra_callbacks,
            *(
                [
                    callbacks_lib.ProgressBar(
                        epoch, config.train.epochs, steps_per_epoch, first_step,
                        run.validation_steps if validate_now else 0,
                    )
                ]
                if progress_bar
                else []
            ),
            _StopAfterEpoch(),
        ]
        fit_history = fit_model.fit(
            dataset,
            # The full count keeps the epoch numbers that callbacks see right;
            # `_StopAfterEpoch` ends this call after one epoch.
            epochs=config.train.epochs,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch - first_step,
            validation_data=inputs.validation if validate_now else None,
            validation_steps=run.validation_steps if validate_now else None,
            callbacks=epoch_callbacks,
            # Keras's own lines would repeat the epoch line logged below.
            verbose=0,
            shuffle=False,
        )
        logs = {key: float(values[-1]) for key, values in fit_history.history.items()}
        if training_logger is not None:
            logs.update(training_logger.epoch_summary(epoch, logs))
        else:
            logs["lr"] = float(schedule(int(keras.ops.convert_to_numpy(fit_model.optimizer.iterations)) - 1))
        history.setdefault("epoch", []).append(epoch + 1)
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        state["best"] = _update_best(
            state["best"],
            {"value": logs.get(monitor), "loss": logs.get(monitor_loss), "epoch": epoch + 1},
            keep_last=monitor == configs.LAST_EPOCH,
        )
        if run.chief:
            _save_model(model, output.last_checkpoint, config)
            if state["best"]["epoch"] == epoch + 1 or not os.path.exists(output.best_checkpoint):
                _copy_checkpoint(output.last_checkpoint, output.best_checkpoint)
        state.update(
            epoch=epoch + 1,
            step_in_epoch=0,
            history=history,
            finished=epoch + 1 >= config.train.epochs,
        )
        # The history first: once the backup says the epoch is done, a
        # resumed run never writes this epoch's row again.
        if run.chief:
            callbacks_lib.write_history_csv(output.history, history)
        callbacks_lib.save_backup(backup_dir, fit_model, state, include_metrics=False)
        logger.info(
            "Epoch %d/%d: %s",
            epoch + 1,
            config.train.epochs,
            ", ".join(f"{key} {value:.4g}" for key, value in logs.items()),
        )
    if run.chief and not os.path.exists(output.last_checkpoint):
        _save_model(model, output.last_checkpoint, config)
        _copy_checkpoint(output.last_checkpoint, output.best_checkpoint)
    if training_logger is not None:
        training_logger.close()
    return history


def train(
    config: configs.ExperimentConfig,
    data_dir: str,
    run_dir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int | str = "auto",
    extra_callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains `config` on `data_dir`, writing (or resuming) `run_dir`.

    Re-running the same call after an interruption (even `kill -9`) resumes
    from the last backup: finished epochs are not redone and the batches of
    the interrupted epoch that were trained on are skipped. A finished run
    returns at once.

    The work is done in four steps: `_prepare_run` (data, run directory,
    resume check), `_build_inputs`, `_build_and_compile` (model, optimizer,
    schedule in the replicas' scope) and `_run_epochs`, all on the Keras
    backend in use (`keras.backend.backend()`).

    Args:
        config: the experiment (see `trainer.configs`).
        data_dir: converted dataset: `train-*.tfrecord`, optionally
            `validation-*.tfrecord`, and `labels.txt`; or in-memory clips,
            `synthetic:motion[:...]` or a `.npz` file (`trainer.numpy_data`).
        run_dir: output directory (layout in `selfy_tf.run_dir`).
        strategy: a `tf.distribute.Strategy` (TensorFlow backend only);
            default: from `config.runtime.strategy` (`trainer.distribution`).
        verbose: "auto" (a progress bar within each epoch when stderr is a
            terminal), 1 (the bar), or 0 or 2 (no bar). Every finished epoch
            is logged once, as `Epoch e/E: loss ..., val_top1 ...` (logger
            `trainer.train`, INFO).
        extra_callbacks: more Keras callbacks for every epoch's `fit`.

    Returns:
        A `TrainResult` (history, paths, steps).

    Raises:
        ValueError: invalid config, data that does not fit the model, or a
            run directory holding a run with another config.
        FileNotFoundError: missing data directory, labels or init weights.
    """
    configs.validate(config)
    replicas = distribution_lib.make_replicas(config.runtime.strategy, strategy)
    run = _prepare_run(config, data_dir, run_dir, replicas)
    config = run.config
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.runtime.mixed_precision)
    try:
        # The STSS op's XLA switch is read when Keras traces the train and
        # validation steps, inside `fit`.
        with replicas.run_scope(), stss_xla(config.runtime.stss_xla):
            model, fit_model, schedule = _build_and_compile(run, replicas)
            state, resumed_from = _restore_state(run, fit_model)
            monitor = config.train.monitor if run.data.has_validation else config.train.monitor.removeprefix("val_")
            inputs = _build_inputs(run, replicas)
            history = _run_epochs(
                run, inputs, model, fit_model, schedule, state, monitor, _progress_bar(verbose), extra_callbacks
            )
            global_step = int(keras.ops.convert_to_numpy(fit_model.optimizer.iterations))
    finally:
        keras.config.set_dtype_policy(previous_policy)
        if run.scratch is not None:
            shutil.rmtree(run.scratch, ignore_errors=True)
    result = TrainResult(
        run_dir=run.paths.root,
        history=history,
        epochs_completed=int(state["epoch"]),
        global_step=global_step,
        best_checkpoint=run.paths.best_checkpoint,
        last_checkpoint=run.paths.last_checkpoint,
        best_metric={
            "name": monitor,
            "value": (state["best"] or {}).get("value"),
            "epoch": (state["best"] or {}).get("epoch"),
        },
        resumed_from=resumed_from,
        global_batch_size=run.global_batch,
        num_replicas=run.num_replicas,
        warnings=run.warnings,
        backend=keras.backend.backend(),
    )
    if run.chief:
        atomic_write_text(run.paths.result, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


class _StopAfterEpoch(keras.callbacks.Callback):
    """Ends a `fit` call after its first epoch (the trainer runs one per epoch)."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = True


def _save_model(model: keras.Model, path: str, config: configs.ExperimentConfig) -> None:
    save_model(model, path, config.eval_view())


def _copy_checkpoint(source: str, destination: str) -> None:
    """Copies the `.keras` file just saved atomically: the same model is not
    serialised a second time (with `train.monitor=last`, every epoch)."""
    with atomic_path(destination, suffix=".keras") as temporary:
        shutil.copyfile(source, temporary)
