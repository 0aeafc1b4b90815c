"""Defaults of the SELFY layers, read by the layers and by the model zoo.

A module of its own because `SELFYBlock` and `STSSTransformation` share them
and `selfy_block.py` imports `stss_transformation.py`. The STSS window's
default is the op's, `selfy_tf.ops.DEFAULT_WINDOW`.
"""

# Frames per clip of the reference setting (SELFYBlock, and the zoo's models).
NUM_FRAMES = 8

# The reference widths (DESIGN.md §3): the layers' defaults, and the model
# zoo's `selfy_channels=None`.
REFERENCE_CHANNELS = {
    "hidden_channels": 128,
    "extraction_channels": (4, 16, 64, 64),
    "integration_channels": (64, 64, 64, 64),
}
