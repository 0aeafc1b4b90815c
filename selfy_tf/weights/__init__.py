"""Weight import from the official PyTorch release and ImageNet ResNets.

torch is needed only to read `.pth` files; it is imported when used
(`pip install -e ".[torch]"`).
"""

from selfy_tf.weights._torch_keys import (
    TORCH_TRANSFORMS,
    WeightMapping,
    selfy_block_mapping,
    selfy_block_skipped_keys,
)
from selfy_tf.weights.imagenet import load_imagenet_resnet
from selfy_tf.weights.mapping import (
    LoadReport,
    torch_module_name,
    torch_weight_mapping,
)
from selfy_tf.weights.official import (
    load_official_checkpoint,
    load_official_state_dict,
    normalize_official_keys,
)
from selfy_tf.weights.transfer import CLASSIFIER_LAYER, copy_matching_weights

__all__ = [
    "CLASSIFIER_LAYER",
    "LoadReport",
    "copy_matching_weights",
    "TORCH_TRANSFORMS",
    "WeightMapping",
    "load_imagenet_resnet",
    "load_official_checkpoint",
    "load_official_state_dict",
    "normalize_official_keys",
    "selfy_block_mapping",
    "selfy_block_skipped_keys",
    "torch_module_name",
    "torch_weight_mapping",
]
