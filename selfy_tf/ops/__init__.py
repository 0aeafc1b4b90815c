"""TensorFlow ops of selfy-tf (compositions of TF ops; no custom kernels)."""

from selfy_tf.ops.stss import (
    DEFAULT_BACKEND,
    DEFAULT_WINDOW,
    STSS_BACKENDS,
    set_stss_xla,
    stss,
    stss_last_frame,
    stss_xla,
    stss_xla_enabled,
)

__all__ = ["DEFAULT_BACKEND", "DEFAULT_WINDOW", "STSS_BACKENDS", "set_stss_xla", "stss", "stss_last_frame", "stss_xla", "stss_xla_enabled"]
