"""Training and evaluation of selfy-tf models with Keras `model.fit`.

    from trainer import get_preset, apply_overrides, train, evaluate

    config = apply_overrides(get_preset("tiny_cpu"), ["train.epochs=2"])
    result = train(config, "DATA_DIR", "RUN_DIR")
    report = evaluate("RUN_DIR", "DATA_DIR")

Names are imported on first use, so the configs (`trainer.configs`, read by
`selfy train --help`) load without Keras or TensorFlow.
"""

from __future__ import annotations

from selfy_tf._lazy import keep_exported_names, lazy_exports

_EXPORTS = {
    "ExperimentConfig": "trainer.configs",
    "apply_overrides": "trainer.configs",
    "get_preset": "trainer.presets",
    "list_presets": "trainer.presets",
    "load_yaml": "trainer.configs",
    "validate": "trainer.configs",
    "evaluate": "trainer.evaluate",
    "plan_flips": "trainer.flips",
    "TorchSGD": "trainer.optimizer",
    "parameter_groups": "trainer.optimizer",
    "EpochCosineDecay": "trainer.schedules",
    "EpochStepDecay": "trainer.schedules",
    "TrainResult": "trainer.train",
    "train": "trainer.train",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("trainer", _EXPORTS, globals())
# `trainer.evaluate` and `trainer.train` name functions, not their modules.
keep_exported_names("trainer", _EXPORTS)
