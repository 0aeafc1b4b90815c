"""Model zoo: TSN / TSM / SELFYNet ResNets by name.

    >>> from selfy_tf.models import create_model, list_models
    >>> model = create_model("selfy_tsm_r50", num_classes=174)
    >>> model = create_model("selfy_tsm_r50.sthv1_16f")  # a pretrained config's architecture
"""

from selfy_tf.layers.frame_preprocessing import FramePreprocessing
from selfy_tf.layers.segment_consensus import SegmentConsensus
from selfy_tf.models import tsm_resnet  # noqa: F401  (registers the family)
from selfy_tf.models._builder import create_model, load_weights_file
from selfy_tf.models._registry import (
    get_pretrained_cfg,
    is_model,
    list_models,
    list_pretrained,
    model_args,
    register_model,
)
from selfy_tf.models.folded_batch_norm import FoldedBatchNorm
from selfy_tf.models.folding import fold_batch_norms
from selfy_tf.models.macs import count_macs
from selfy_tf.models.precision import with_dtype_policy
from selfy_tf.models.tsm_resnet import resolve_selfy_channels, stss_grid_problem

__all__ = [
    "FoldedBatchNorm",
    "FramePreprocessing",
    "SegmentConsensus",
    "count_macs",
    "create_model",
    "fold_batch_norms",
    "get_pretrained_cfg",
    "is_model",
    "list_models",
    "list_pretrained",
    "load_weights_file",
    "model_args",
    "register_model",
    "resolve_selfy_channels",
    "stss_grid_problem",
    "with_dtype_policy",
]
