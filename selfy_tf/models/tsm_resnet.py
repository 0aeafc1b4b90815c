"""TSN / TSM / SELFYNet ResNets: blocks, pretrained-config table, registered builders.

One family of video classifiers that share a 2-D ResNet v1.5 backbone over
frames folded into the batch (DESIGN.md §3–§4):

- `tsn_r*`: plain ResNet per frame, average of the frame logits (TSN).
- `tsm_r*`: the same with a temporal shift at the start of every residual
  branch (TSM, Lin et al., ICCV 2019).
- `selfy_tsm_r*`: TSM with one SELFY block after stage res3 (`layer2`)
  (Kwon et al., ICCV 2021).

Layer names mirror the official PyTorch modules with dots written as
underscores: `conv1`, `bn1`, `layer2_0_conv1`, `layer2_0_downsample_0`,
`layer2_0_downsample_1`, `selfy`, `new_fc`. Helper layers that have no
PyTorch counterpart carry a suffix (`layer2_0_shift`, `layer2_0_conv1_pad`,
`layer2_0_add`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any, Mapping

import keras

from selfy_tf.layers import _batch_norm, _checks, _conv
from selfy_tf.layers._defaults import NUM_FRAMES, REFERENCE_CHANNELS
from selfy_tf.layers.conv2d import Conv2D
from selfy_tf.layers.frame_preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FramePreprocessing,
)
from selfy_tf.layers.segment_consensus import SegmentConsensus
from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.temporal_shift import TemporalShift
from selfy_tf.models._registry import register_model, register_pretrained_cfgs
from selfy_tf.ops import DEFAULT_BACKEND, DEFAULT_WINDOW

logger = logging.getLogger(__name__)

# Weights files that ship with the package (the `.motion` configs).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")

# Output stride of the stage the SELFY block follows.
SELFY_STAGES: dict[str, int] = {"res2": 4, "res3": 8, "res4": 16}




def stss_grid_problem(input_size: int, selfy_stage: str, variant: str = "the SELFY model") -> str | None:
    """Why the SELFY block's feature grid cannot hold its STSS window, or None.

    The block compares each position with its `U x V` neighbourhood (9 x 9 by
    default: offsets -4 .. 4). On a grid of 4 x 4 or less (input 32 after
    res3) the outermost offsets never fall on the map, and most of every
    window is zero padding, so the block sees little motion. The message
    names the smallest input size that fits, at this stage and at res2.
    """
    stride = SELFY_STAGES[selfy_stage]
    grid = input_size // stride
    window = max(DEFAULT_WINDOW[1:])
    reach = window // 2 + 1
    if grid >= reach:
        return None

    def smallest_input(stage: str) -> int:
        multiple = 2 * SELFY_STAGES[stage]
        return max(32, -(-reach * SELFY_STAGES[stage] // multiple) * multiple)

    fixes = f"input_size >= {smallest_input(selfy_stage)}"
    if selfy_stage != "res2":
        fixes += f", or selfy_stage='res2' with input_size >= {smallest_input('res2')}"
    return (
        f"{variant} with input_size={input_size} and selfy_stage={selfy_stage!r} gives the "
        f"SELFY block a {grid}x{grid} feature grid, too small for its {window}x{window} STSS "
        f"window (offsets up to {window // 2} need a grid of {reach}x{reach} or more): the "
        f"block would see little motion. Use {fixes}."
    )


@dataclasses.dataclass(frozen=True)
class ResNetArch:
    """Architecture of one ResNet depth.

    Attributes:
        block: "basic" (two 3x3 convs) or "bottleneck" (1x1, 3x3, 1x1).
        layers: number of blocks in each of the four stages.
    """

    block: str
    layers: tuple[int, int, int, int]

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1


RESNET_ARCHS: dict[str, ResNetArch] = {
    "r18": ResNetArch("basic", (2, 2, 2, 2)),
    "r34": ResNetArch("basic", (3, 4, 6, 3)),
    "r50": ResNetArch("bottleneck", (3, 4, 6, 3)),
    "r101": ResNetArch("bottleneck", (3, 4, 23, 3)),
}


# The family's builder arguments and their defaults: the one copy, read by
# the builders, `create_model` and `_cfg`, and by the trainer for its
# unset `model.*` fields (`selfy_tf.models.model_args`). `create_model`
# documents them.
MODEL_DEFAULTS: dict[str, Any] = {
    "num_classes": 174,
    "num_frames": NUM_FRAMES,
    "input_size": 224,
    "dropout": 0.5,
    "selfy_stage": "res3",
    "stss_backend": DEFAULT_BACKEND,
    "width_multiplier": 1.0,
    # None: the reference SELFY widths (the layers' REFERENCE_CHANNELS).
    "selfy_channels": None,
    "sync_batchnorm": False,
    # Who computes training-mode batch statistics (`batch_norm_statistics`).
    "batch_norm_statistics": "exact",
    # Causal temporal shift and STSS (streaming); same weights as offline.
    "causal": False,
}

_register = functools.partial(register_model, defaults=MODEL_DEFAULTS)


def _cfg(**overrides: Any) -> dict[str, Any]:
    """A pretrained config with the family's shared defaults.

    Its keys that are builder arguments (`MODEL_DEFAULTS`) are the
    architecture of the config: `create_model("arch.tag")` builds with them.
    """
    cfg = {
        "num_classes": MODEL_DEFAULTS["num_classes"],
        "num_frames": MODEL_DEFAULTS["num_frames"],
        "input_size": MODEL_DEFAULTS["input_size"],
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        # The official release publishes no weight files: convert checkpoints
        # trained with the official code (`selfy convert-weights`).
        "weights_file": None,
        "license": "see the official release, github.com/arunos728/SELFY",
        "paper_ids": "arXiv:2102.07092",
        "dataset": None,
        "top1": None,
        "top5": None,
        # Trainable weights and multiply-accumulates per clip of the
        # architecture at this config's num_classes / num_frames / input_size.
        "params": None,
        "gmacs": None,
    }
    cfg.update(overrides)
    return cfg


# Keys `arch.tag`. Top-1 (1 clip, centre crop) from the SELFY paper; parameter
# counts from the official release (DESIGN.md §3), checked by the tests.
default_cfgs: dict[str, dict[str, Any]] = {
    "selfy_tsm_r50.sthv1_8f": _cfg(
        dataset="something-something-v1", top1=52.5, params=24_830_842, gmacs=35.99
    ),
    "selfy_tsm_r50.sthv1_16f": _cfg(
        dataset="something-something-v1", num_frames=16, top1=54.3, top5=82.9,
        params=24_830_842, gmacs=71.98,
    ),
    "selfy_tsm_r50.sthv2_8f": _cfg(
        dataset="something-something-v2", top1=64.5, params=24_830_842, gmacs=35.99
    ),
    "selfy_tsm_r50.sthv2_16f": _cfg(
        dataset="something-something-v2", num_frames=16, top1=65.7, top5=89.8,
        params=24_830_842, gmacs=71.98,
    ),
    "selfy_tsm_r18.sthv1_8f": _cfg(
        dataset="something-something-v1", top1=48.4, params=11_764_346
    ),
    "tsm_r50.sthv1_8f": _cfg(
        dataset="something-something-v1", params=23_864_558, gmacs=32.70
    ),
    # The official Kinetics recipe's architecture (no published score); the
    # count is the SS-V1 model's with 226 more classes of 2049 weights.
    "selfy_tsm_r50.kinetics400_8f": _cfg(
        dataset="kinetics-400", num_classes=400, params=25_293_916
    ),
    # A SELFY TSM-R18 small enough to train for a few steps on a laptop CPU
    # (the trainer's `tiny_cpu` preset); its class count comes from the
    # data. The block follows res2, whose 8x8 grid holds the STSS window.
    "selfy_tsm_r18.tiny": _cfg(
        num_classes=None, num_frames=4, input_size=32, dropout=0.0, selfy_stage="res2",
        width_multiplier=0.125, selfy_channels=8, license=None, paper_ids=None,
    ),
    # Small models pretrained by this package on its synthetic motion
    # classes (`python -m trainer.motion_pretraining`, weights shipped in
    # `selfy_tf/models/pretrained/`), which the `small_videos_cpu` preset
    # fine-tunes on a user's videos.
    **{
        f"{arch}.motion": _cfg(
            num_classes=10, num_frames=8, input_size=48, dropout=0.2, selfy_stage="res2",
            width_multiplier=0.25, selfy_channels=32, license="Apache-2.0", paper_ids=None,
            dataset="selfy_tf.datasets.synthetic_motion",
            weights_file=os.path.join(PRETRAINED_DIR, f"{arch}_motion.weights.h5"),
        )
        for arch in ("selfy_tsm_r18", "tsm_r18", "tsn_r18")
    },
}


def _scaled(channels: int, width_multiplier: float) -> int:
    """`channels * width_multiplier`, rounded to a multiple of 8 (at least 8)."""
    if width_multiplier == 1.0:
        return channels
    return max(8, int(round(channels * width_multiplier / 8.0)) * 8)


def resolve_selfy_channels(selfy_channels: int | Mapping[str, Any] | None) -> dict[str, Any]:
    """Resolves the `selfy_channels` argument into the block's three width arguments.

    Args:
        selfy_channels: `None` for the reference widths (hidden 128,
            extraction (4, 16, 64, 64), integration (64, 64, 64, 64)); an int
            `k` for hidden width `k` with the other widths scaled by `k / 128`
            (at least 1 each); or a dict with any of the keys
            `hidden_channels`, `extraction_channels` (4 ints) and
            `integration_channels` (4 ints) overriding the reference.

    Returns:
        A dict with the keys `hidden_channels`, `extraction_channels`,
        `integration_channels`.

    Raises:
        ValueError: for another type, an unknown key or a non-positive width.
    """
    reference = REFERENCE_CHANNELS
    if selfy_channels is None:
        return dict(reference)
    if isinstance(selfy_channels, Mapping):
        unknown = sorted(set(selfy_channels) - set(reference))
        if unknown:
            raise ValueError(
                f"`selfy_channels` has unknown keys {unknown}. Expected any of "
                f"{sorted(reference)}. Received: selfy_channels={dict(selfy_channels)!r}."
            )
        resolved = dict(reference)
        resolved.update(selfy_channels)
        _checks.check_positive_int("selfy_channels['hidden_channels']", resolved["hidden_channels"])
        for key in ("extraction_channels", "integration_channels"):
            resolved[key] = _checks.check_channels(f"selfy_channels['{key}']", resolved[key], 4)
        return resolved
    if isinstance(selfy_channels, bool) or not isinstance(selfy_channels, int) or selfy_channels < 1:
        raise ValueError(
            "`selfy_channels` must be None, a positive int (the hidden width; the "
            "other widths scale with it) or a dict of widths. Received: "
            f"selfy_channels={selfy_channels!r}. Try selfy_channels=16."
        )
    factor = selfy_channels / reference["hidden_channels"]
    return {
        "hidden_channels": selfy_channels,
        "extraction_channels": tuple(
            max(1, int(round(width * factor))) for width in reference["extraction_channels"]
        ),
        "integration_channels": tuple(
            max(1, int(round(width * factor))) for width in reference["integration_channels"]
        ),
    }


# `batch_norm_statistics` of the models -> the `training_statistics` of the
# backbone's batch norms and of the SELFY block's. The default, "exact", is
# the choice measured in docs/architecture.md ("Training batch norm
# statistics"): TensorFlow's fused kernel loses ~1e-1 of the SELFY block's
# gradients, and in the backbone its oneDNN CPU version (TensorFlow's default
# on x86) lets 5 SGD steps drift far more than PyTorch's float32 run.
BATCH_NORM_STATISTICS_RULES: dict[str, dict[str, str]] = {
    "exact": {"backbone": "exact", "selfy": "exact"},
    "tensorflow_backbone": {"backbone": "tensorflow", "selfy": "exact"},
    "tensorflow": {"backbone": "tensorflow", "selfy": "tensorflow"},
}


def batch_norm_statistics_rule(batch_norm_statistics: str) -> dict[str, str]:
    """`{"backbone": ..., "selfy": ...}` training statistics for a model-level choice.

    Raises:
        ValueError: `batch_norm_statistics` is not a key of
            `BATCH_NORM_STATISTICS_RULES`.
    """
    if batch_norm_statistics not in BATCH_NORM_STATISTICS_RULES:
        raise ValueError(
            f"`batch_norm_statistics` must be one of {tuple(BATCH_NORM_STATISTICS_RULES)}. "
            f"Received: batch_norm_statistics={batch_norm_statistics!r}. "
            "Try batch_norm_statistics='exact'."
        )
    return dict(BATCH_NORM_STATISTICS_RULES[batch_norm_statistics])


class _LayerFactory:
    """Makes the backbone's layers with the model-wide settings."""

    def __init__(self, sync_batchnorm: bool, batch_norm_statistics: str = "exact"):
        self.sync_batchnorm = sync_batchnorm
        self.batch_norm_statistics = batch_norm_statistics

    def conv(self, filters: int, kernel_size: int, strides: int, name: str, padding: str = "valid"):
        return Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=False,
            kernel_initializer=_conv.torch_conv_initializer(),
            name=name,
        )

    def batch_norm(self, name: str, zero_init: bool = False):
        return _batch_norm.make_batch_norm(
            name,
            dtype=None,
            momentum=_batch_norm.BATCH_NORM_MOMENTUM,
            epsilon=_batch_norm.BATCH_NORM_EPSILON,
            gamma_initializer="zeros" if zero_init else "ones",
            synchronized=self.sync_batchnorm,
            training_statistics=self.batch_norm_statistics,
        )


def _conv_bn(
    x,
    factory: _LayerFactory,
    filters: int,
    kernel_size: int,
    strides: int,
    conv_name: str,
    bn_name: str,
    relu_name: str | None,
    zero_init: bool = False,
):
    """Conv (torch-style symmetric padding) + BN (+ ReLU)."""
    padding = kernel_size // 2
    if strides == 1:
        # Symmetric for odd kernels at stride 1: "same" equals torch padding.
        x = factory.conv(filters, kernel_size, 1, conv_name, padding="same")(x)
    else:
        if padding:
            x = keras.layers.ZeroPadding2D(padding, name=f"{conv_name}_pad")(x)
        x = factory.conv(filters, kernel_size, strides, conv_name)(x)
    x = factory.batch_norm(bn_name, zero_init=zero_init)(x)
    if relu_name:
        x = keras.layers.ReLU(name=relu_name)(x)
    return x


def _residual_block(
    x,
    factory: _LayerFactory,
    arch: ResNetArch,
    planes: int,
    strides: int,
    num_frames: int,
    shift: bool,
    name: str,
    causal: bool = False,
):
    """One basic or bottleneck block, TSM shift at the start of the residual branch."""
    in_channels = x.shape[-1]
    out_channels = planes * arch.expansion
    shortcut = x
    if strides != 1 or in_channels != out_channels:
        shortcut = factory.conv(out_channels, 1, strides, f"{name}_downsample_0")(x)
        shortcut = factory.batch_norm(f"{name}_downsample_1")(shortcut)
    branch = x
    if shift:
        branch = TemporalShift(num_frames, causal=causal, name=f"{name}_shift")(branch)
    if arch.block == "basic":
        branch = _conv_bn(branch, factory, planes, 3, strides, f"{name}_conv1", f"{name}_bn1", f"{name}_relu1")
        branch = _conv_bn(branch, factory, planes, 3, 1, f"{name}_conv2", f"{name}_bn2", None, zero_init=True)
    else:
        # ResNet v1.5: the stride sits on the 3x3 convolution.
        branch = _conv_bn(branch, factory, planes, 1, 1, f"{name}_conv1", f"{name}_bn1", f"{name}_relu1")
        branch = _conv_bn(branch, factory, planes, 3, strides, f"{name}_conv2", f"{name}_bn2", f"{name}_relu2")
        branch = _conv_bn(branch, factory, out_channels, 1, 1, f"{name}_conv3", f"{name}_bn3", None, zero_init=True)
    x = keras.layers.Add(name=f"{name}_add")([branch, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _selfy_block(
    x,
    num_frames: int,
    channels: dict[str, Any],
    stss_backend: str,
    sync_batchnorm: bool,
    causal: bool = False,
    batch_norm_statistics: str = "exact",
):
    return SELFYBlock(
        num_frames=num_frames,
        hidden_channels=channels["hidden_channels"],
        extraction_channels=channels["extraction_channels"],
        integration_channels=channels["integration_channels"],
        stss_backend=stss_backend,
        sync_batchnorm=sync_batchnorm,
        batch_norm_statistics=batch_norm_statistics,
        causal=causal,
        name="selfy",
    )(x)


def _check_args(
    variant: str,
    num_classes: Any,
    num_frames: Any,
    input_size: Any,
    dropout: Any,
    selfy: bool,
    selfy_stage: str,
    width_multiplier: Any,
) -> None:
    for arg_name, value in (("num_classes", num_classes), ("num_frames", num_frames), ("input_size", input_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"`{arg_name}` must be a positive integer. Received: {arg_name}={value!r}."
            )
    if input_size < 32:
        raise ValueError(
            f"`input_size` must be at least 32 (the backbone's output stride). "
            f"Received: input_size={input_size}."
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}.")
    if not float(width_multiplier) > 0.0:
        raise ValueError(
            f"`width_multiplier` must be positive. Received: width_multiplier={width_multiplier!r}."
        )
    if selfy_stage not in SELFY_STAGES:
        raise ValueError(
            f"`selfy_stage` must be one of {sorted(SELFY_STAGES)}. "
            f"Received: selfy_stage={selfy_stage!r}. Try selfy_stage='res3'."
        )
    if selfy:
        multiple = 2 * SELFY_STAGES[selfy_stage]
        if input_size % multiple:
            suggestion = max(multiple, round(input_size / multiple) * multiple)
            raise ValueError(
                f"`input_size` must be divisible by {multiple} for {variant} with "
                f"selfy_stage={selfy_stage!r}, so that the {selfy_stage} feature map "
                f"(input_size / {SELFY_STAGES[selfy_stage]}) has an even size for the "
                f"SELFY block. Received: input_size={input_size}. Try "
                f"input_size={suggestion}."
            )
        problem = stss_grid_problem(input_size, selfy_stage, variant)
        if problem:
            logger.warning("%s", problem)


def _create_tsm_resnet(
    variant: str,
    depth: str,
    shift: bool,
    selfy: bool,
    **kwargs: Any,
) -> keras.Model:
    """Builds one TSN / TSM / SELFYNet ResNet as a Keras functional model.

    `kwargs` override `MODEL_DEFAULTS`; see `selfy_tf.models.create_model`
    for the arguments.
    """
    unknown = sorted(set(kwargs) - set(MODEL_DEFAULTS))
    if unknown:
        raise TypeError(
            f"{variant}() got unexpected arguments {unknown}. Valid arguments: "
            f"{', '.join(MODEL_DEFAULTS)}."
        )
    return _build(variant, depth, shift, selfy, **{**MODEL_DEFAULTS, **kwargs})


def _build(
    variant: str,
    depth: str,
    shift: bool,
    selfy: bool,
    num_classes: int,
    num_frames: int,
    input_size: int,
    dropout: float,
    selfy_stage: str,
    stss_backend: str,
    width_multiplier: float,
    selfy_channels: int | Mapping[str, Any] | None,
    sync_batchnorm: bool,
    batch_norm_statistics: str,
    causal: bool,
) -> keras.Model:
    if not isinstance(causal, bool):
        raise ValueError(f"`causal` must be True or False. Received: causal={causal!r}.")
    _check_args(variant, num_classes, num_frames, input_size, dropout, selfy, selfy_stage, width_multiplier)
    arch = RESNET_ARCHS[depth]
    width_multiplier = float(width_multiplier)
    statistics = batch_norm_statistics_rule(batch_norm_statistics)
    factory = _LayerFactory(bool(sync_batchnorm), statistics["backbone"])
    channels = resolve_selfy_channels(selfy_channels) if selfy else None

    frames = keras.Input(
        shape=(num_frames, input_size, input_size, 3), dtype="float32", name="frames"
    )
    x = FramePreprocessing(num_frames, name="preprocessing")(frames)
    # Stem: 7x7/2 conv (pad 3), BN, ReLU, 3x3/2 max-pool (pad 1). Zero padding
    # before the max-pool equals -inf padding because its input is >= 0.
    x = _conv_bn(x, factory, _scaled(64, width_multiplier), 7, 2, "conv1", "bn1", "relu")
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)

    stage_names = ("res2", "res3", "res4", "res5")
    for stage_index, num_blocks in enumerate(arch.layers):
        planes = _scaled(64 * 2**stage_index, width_multiplier)
        for block_index in range(num_blocks):
            x = _residual_block(
                x,
                factory,
                arch,
                planes,
                strides=2 if stage_index > 0 and block_index == 0 else 1,
                num_frames=num_frames,
                shift=shift,
                name=f"layer{stage_index + 1}_{block_index}",
                causal=causal,
            )
        if selfy and stage_names[stage_index] == selfy_stage:
            x = _selfy_block(
                x, num_frames, channels, stss_backend, bool(sync_batchnorm), causal,
                statistics["selfy"],
            )

    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    if dropout > 0:
        x = keras.layers.Dropout(float(dropout), name="dropout")(x)
    x = keras.layers.Dense(num_classes, name="new_fc")(x)
    logits = SegmentConsensus(num_frames, name="consensus")(x)
    model = keras.Model(frames, logits, name=variant)
    logger.debug("Built %s: %d trainable weights.", variant, model.count_params())
    return model


@_register
def tsn_r18(**kwargs: Any) -> keras.Model:
    """TSN ResNet-18: per-frame ResNet-18, average of frame logits (causal as it is)."""
    return _create_tsm_resnet("tsn_r18", "r18", shift=False, selfy=False, **kwargs)


@_register
def tsn_r34(**kwargs: Any) -> keras.Model:
    """TSN ResNet-34."""
    return _create_tsm_resnet("tsn_r34", "r34", shift=False, selfy=False, **kwargs)


@_register
def tsn_r50(**kwargs: Any) -> keras.Model:
    """TSN ResNet-50."""
    return _create_tsm_resnet("tsn_r50", "r50", shift=False, selfy=False, **kwargs)


@_register
def tsn_r101(**kwargs: Any) -> keras.Model:
    """TSN ResNet-101."""
    return _create_tsm_resnet("tsn_r101", "r101", shift=False, selfy=False, **kwargs)


@_register
def tsm_r18(**kwargs: Any) -> keras.Model:
    """TSM ResNet-18: temporal shift at the start of every residual branch."""
    return _create_tsm_resnet("tsm_r18", "r18", shift=True, selfy=False, **kwargs)


@_register
def tsm_r34(**kwargs: Any) -> keras.Model:
    """TSM ResNet-34."""
    return _create_tsm_resnet("tsm_r34", "r34", shift=True, selfy=False, **kwargs)


@_register
def tsm_r50(**kwargs: Any) -> keras.Model:
    """TSM ResNet-50."""
    return _create_tsm_resnet("tsm_r50", "r50", shift=True, selfy=False, **kwargs)


@_register
def tsm_r101(**kwargs: Any) -> keras.Model:
    """TSM ResNet-101."""
    return _create_tsm_resnet("tsm_r101", "r101", shift=True, selfy=False, **kwargs)


@_register
def selfy_tsm_r18(**kwargs: Any) -> keras.Model:
    """SELFYNet-TSM-ResNet-18: TSM ResNet-18 with a SELFY block after res3."""
    return _create_tsm_resnet("selfy_tsm_r18", "r18", shift=True, selfy=True, **kwargs)


@_register
def selfy_tsm_r34(**kwargs: Any) -> keras.Model:
    """SELFYNet-TSM-ResNet-34."""
    return _create_tsm_resnet("selfy_tsm_r34", "r34", shift=True, selfy=True, **kwargs)


@_register
def selfy_tsm_r50(**kwargs: Any) -> keras.Model:
    """SELFYNet-TSM-ResNet-50, the paper's main model."""
    return _create_tsm_resnet("selfy_tsm_r50", "r50", shift=True, selfy=True, **kwargs)


@_register
def selfy_tsm_r101(**kwargs: Any) -> keras.Model:
    """SELFYNet-TSM-ResNet-101."""
    return _create_tsm_resnet("selfy_tsm_r101", "r101", shift=True, selfy=True, **kwargs)


register_pretrained_cfgs(default_cfgs)
