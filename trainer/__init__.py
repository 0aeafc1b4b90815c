"""Training and evaluation of selfy-tf models with Keras `model.fit`.

    from trainer import get_preset, apply_overrides, train, evaluate

    config = apply_overrides(get_preset("tiny_cpu"), ["train.epochs=2"])
    result = train(config, "DATA_DIR", "RUN_DIR")
    report = evaluate("RUN_DIR", "DATA_DIR")
"""

from trainer.configs import (
    ExperimentConfig,
    apply_overrides,
    get_preset,
    list_presets,
    load_yaml,
    validate,
)
from trainer.evaluate import evaluate
from trainer.flips import plan_flips
from trainer.optimizer import TorchSGD, parameter_groups
from trainer.schedules import EpochCosineDecay, EpochStepDecay
from trainer.train import TrainResult, train

__all__ = [
    "EpochCosineDecay",
    "EpochStepDecay",
    "ExperimentConfig",
    "TorchSGD",
    "TrainResult",
    "apply_overrides",
    "evaluate",
    "get_preset",
    "list_presets",
    "load_yaml",
    "parameter_groups",
    "plan_flips",
    "train",
    "validate",
]
