"""Small built-in datasets."""

from selfy_tf.datasets import synthetic_motion

__all__ = ["synthetic_motion"]
