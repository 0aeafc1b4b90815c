"""Keras layers of the zoo's video classifiers.

Frame preprocessing, the convolution of the backbones, the temporal shift of TSM, the SELFY block with its
stages, and the segment consensus.
"""

from selfy_tf.layers.conv2d import Conv2D
from selfy_tf.layers.frame_preprocessing import FramePreprocessing
from selfy_tf.layers.segment_consensus import SegmentConsensus
from selfy_tf.layers.selfy_block import SELFYBlock
from selfy_tf.layers.stss_extraction import STSSExtraction
from selfy_tf.layers.stss_integration import STSSIntegration
from selfy_tf.layers.stss_transformation import STSSTransformation
from selfy_tf.layers.temporal_shift import TemporalShift

__all__ = [
    "Conv2D",
    "FramePreprocessing",
    "SELFYBlock",
    "STSSExtraction",
    "STSSIntegration",
    "STSSTransformation",
    "SegmentConsensus",
    "TemporalShift",
]
