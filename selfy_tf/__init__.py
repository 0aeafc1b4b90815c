"""selfy-tf: SELFY (spatio-temporal self-similarity) for TensorFlow / Keras 3."""

from selfy_tf.version import __version__

__all__ = ["__version__"]
