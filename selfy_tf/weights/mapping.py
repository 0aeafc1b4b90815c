"""Mapping between PyTorch state-dict keys and the Keras variables of the zoo.

`torch_weight_mapping(model)` walks a model and says which PyTorch key fills
which Keras variable and how its layout is converted; the records of each
block kind come from `selfy_tf.weights._torch_keys`:

| layer kind (Keras layer)              | PyTorch tensor                    | Keras variable                  | transform             |
| ------------------------------------- | --------------------------------- | ------------------------------- | --------------------- |
| Conv2D (`conv1`, `layer2_0_conv1`, `layer2_0_downsample_0`) | Conv2d `[o, i, kh, kw]` | kernel `[kh, kw, i, o]` | `conv2d` |
| BatchNormalization (`bn1`, `layer2_0_bn1`, `layer2_0_downsample_1`) | `weight`, `bias`, `running_mean`, `running_var` | `gamma`, `beta`, `moving_mean`, `moving_variance` | `identity` |
| Dense (`new_fc`)                      | Conv1d `[o, i, 1]` or Linear `[o, i]`, `bias` `[o]` | kernel `[i, o]`, bias `[o]` | `linear`, `identity` |
| SELFY block (`selfy`): (1, k, k) Conv3d, ConvTranspose3d, BN3d | see `selfy_tf.weights._torch_keys` | | `conv3d_1kk`, `conv_transpose3d_k1`, `identity` |

A Keras backbone layer named `layer2_0_conv1` is the PyTorch module
`layer2.0.conv1` (dots written as underscores). Keys skipped on purpose:
BatchNorm `num_batches_tracked` counters (Keras keeps no step count).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Callable, Iterable, Mapping

import keras
import numpy as np

from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.weights._torch_keys import (
    BATCH_NORM_SKIPPED_SUFFIX,
    WeightMapping,
    batch_norm_mapping,
    dense_mapping,
    selfy_block_mapping,
)

logger = logging.getLogger(__name__)

OFFICIAL_BACKBONE_PREFIX = "module.base_model."
OFFICIAL_CLASSIFIER_PREFIX = "module.new_fc."
CLASSIFIER_LAYER = "new_fc"
SELFY_LAYER = "selfy"
SKIPPED_SUFFIXES = (f".{BATCH_NORM_SKIPPED_SUFFIX}",)

_BACKBONE_NAME = re.compile(
    r"^(?:(conv1|bn1)|layer(\d+)_(\d+)_(conv\d+|bn\d+|downsample_\d+))$"
)


def torch_module_name(layer_name: str) -> str | None:
    """The PyTorch module path of a backbone layer (`layer2_0_conv1` → `layer2.0.conv1`).

    Returns `None` for names that are not backbone convolutions / batch norms.
    """
    match = _BACKBONE_NAME.match(layer_name)
    if match is None:
        return None
    if match.group(1):
        return match.group(1)
    stage, block, module = match.group(2), match.group(3), match.group(4)
    return f"layer{stage}.{block}.{module.replace('_', '.')}"


def is_backbone_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a backbone convolution or batch norm of the zoo."""
    return torch_module_name(layer.name) is not None


def torch_weight_mapping(
    model: keras.Model,
    backbone_prefix: str = OFFICIAL_BACKBONE_PREFIX,
    classifier_prefix: str = OFFICIAL_CLASSIFIER_PREFIX,
    include_backbone: bool = True,
    include_selfy: bool = True,
    include_classifier: bool = True,
) -> list[WeightMapping]:
    """Lists `(Keras variable, PyTorch key, transform)` records for a zoo model.

    Args:
        model: a model built by `selfy_tf.models.create_model`.
        backbone_prefix: prefix of backbone and SELFY keys
            (`"module.base_model."` in official checkpoints, `""` for a
            torchvision ResNet).
        classifier_prefix: prefix of the classifier keys (`"module.new_fc."`).
        include_backbone / include_selfy / include_classifier: which parts
            to list.

    Returns:
        One record per variable of the included parts, in model order.

    Raises:
        ValueError: if an included layer with weights has no known mapping.
    """
    records: list[WeightMapping] = []
    for layer in model.layers:
        if not layer.weights:
            continue
        module = torch_module_name(layer.name)
        if module is not None:
            if not include_backbone:
                continue
            if isinstance(layer, keras.layers.Conv2D):
                records.append(
                    WeightMapping(layer.kernel, f"{backbone_prefix}{module}.weight", "conv2d")
                )
                continue
            if isinstance(layer, keras.layers.BatchNormalization):
                records.extend(batch_norm_mapping(layer, f"{backbone_prefix}{module}"))
                continue
        elif isinstance(layer, SELFYBlock):
            if include_selfy:
                records.extend(selfy_block_mapping(layer, f"{backbone_prefix}{layer.name}."))
            continue
        elif layer.name == CLASSIFIER_LAYER and isinstance(layer, keras.layers.Dense):
            if include_classifier:
                records.extend(dense_mapping(layer, classifier_prefix))
            continue
        raise ValueError(
            f"Layer `{layer.name}` ({type(layer).__name__}) of model `{model.name}` has "
            "weights but no PyTorch mapping. Only models built by "
            "`selfy_tf.models.create_model` can be converted."
        )
    return records


def is_skipped_key(key: str) -> bool:
    """Whether a PyTorch key has no Keras counterpart on purpose."""
    return key.endswith(SKIPPED_SUFFIXES)


@dataclasses.dataclass
class LoadReport:
    """What a weight import did.

    Attributes:
        source: the file the weights came from.
        loaded: PyTorch keys (or h5 layer names) copied into the model.
        skipped: source keys left out on purpose (BN counters, parts the
            caller chose not to load).
        missing: keys the model needs that the source lacks.
        unexpected: source keys that match nothing in the model.
        mismatched: `(key, source shape, expected shape)` for keys whose
            shape does not fit.
        fresh: Keras variable paths left at their initial values.
    """

    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    fresh: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        """The missing / unexpected / mismatched keys, one line each."""
        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            lines.append(
                f"shape-mismatched keys ({len(self.mismatched)}): "
                + ", ".join(f"{key} {source} vs {target}" for key, source, target in self.mismatched)
            )
        return "\n".join(lines)

    def summary(self) -> dict[str, object]:
        """Counts, for logs and the CLI's JSON output."""
        return {
            "source": self.source,
            "loaded_tensors": len(self.loaded),
            "skipped_tensors": len(self.skipped),
            "missing_tensors": len(self.missing),
            "unexpected_tensors": len(self.unexpected),
            "mismatched_tensors": len(self.mismatched),
            "fresh_variables": len(self.fresh),
        }


def assign_state_dict(
    model: keras.Model,
    state_dict: Mapping[str, np.ndarray],
    records: Iterable[WeightMapping],
    source: str,
    strict: bool = True,
    skip: Callable[[str], bool] = is_skipped_key,
) -> LoadReport:
    """Copies `state_dict` into `model` through mapping `records`.

    Every source key must be consumed by a record or accepted by `skip`;
    every record must find its key with a fitting shape.

    Args:
        model: the target model.
        state_dict: PyTorch key → array.
        records: the mapping (from `torch_weight_mapping`).
        source: the file name, for messages.
        strict: raise on any missing, unexpected or mismatched key (nothing
            is assigned then); otherwise log them and load what fits.
        skip: predicate for source keys left out on purpose.

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: with `strict`, listing every problem key by name.
    """
    records = list(records)
    report = LoadReport(source=source)
    mapped_keys = {record.torch_key for record in records}
    assignments = []
    for record in records:
        if record.torch_key not in state_dict:
            report.missing.append(record.torch_key)
            continue
        array = np.asarray(state_dict[record.torch_key])
        try:
            converted = record.convert(array)
        except ValueError:
            report.mismatched.append(
                (record.torch_key, tuple(array.shape), tuple(record.variable.shape))
            )
            continue
        assignments.append((record, converted))
    for key in state_dict:
        if key in mapped_keys:
            continue
        if skip(key):
            report.skipped.append(key)
        else:
            report.unexpected.append(key)
    if strict and not report.ok:
        raise ValueError(
            f"Weights in {source!r} do not fit model `{model.name}` "
            f"(pass strict=False to load what fits):\n{report.problems()}"
        )
    if not report.ok:
        logger.warning(
            "Loading %s into %s non-strictly:\n%s", source, model.name, report.problems()
        )
    assigned = set()
    for record, converted in assignments:
        record.variable.assign(converted.astype(record.variable.dtype))
        report.loaded.append(record.torch_key)
        assigned.add(id(record.variable))
    report.fresh = [
        variable.path
        for variable in model.weights
        if id(variable) not in assigned and _is_model_state(variable)
    ]
    return report


def _is_model_state(variable: keras.Variable) -> bool:
    # Dropout's random-seed state is not a weight of the network.
    return "seed_generator" not in variable.path
