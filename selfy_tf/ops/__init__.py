"""TensorFlow ops of selfy-tf (compositions of TF ops; no custom kernels)."""

from selfy_tf.ops.stss import STSS_BACKENDS, stss

__all__ = ["STSS_BACKENDS", "stss"]
