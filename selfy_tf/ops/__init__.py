"""TensorFlow ops of selfy-tf (compositions of TF ops; no custom kernels)."""

from selfy_tf.ops.stss import DEFAULT_BACKEND, STSS_BACKENDS, stss

__all__ = ["DEFAULT_BACKEND", "STSS_BACKENDS", "stss"]
