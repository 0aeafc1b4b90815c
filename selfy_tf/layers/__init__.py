"""Keras layers of SELFY: the temporal shift of TSM and the SELFY block with its stages."""

from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.stss_extraction import STSSExtraction
from selfy_tf.layers.stss_integration import STSSIntegration
from selfy_tf.layers.stss_transformation import STSSTransformation
from selfy_tf.layers.temporal_shift import TemporalShift

__all__ = [
    "SELFYBlock",
    "STSSExtraction",
    "STSSIntegration",
    "STSSTransformation",
    "TemporalShift",
]
