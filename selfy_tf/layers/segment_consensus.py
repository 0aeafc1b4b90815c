"""Segment consensus: average per-frame logits over the frames of each clip."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="selfy")
class SegmentConsensus(keras.layers.Layer):
    """Averages per-frame predictions into one prediction per clip.

    The "avg" consensus of Temporal Segment Networks (Wang et al., ECCV 2016),
    as TSM and SELFY use it: the backbone classifies every frame (frames
    folded into the batch) and the clip logits are the mean over frames. The
    mean is computed in float32 and the output is float32, also under mixed
    precision, so that losses and exported signatures see float32 logits.

    Args:
        num_frames: int, frames per clip.
        **kwargs: base layer arguments (`name`, ...); `dtype` defaults to
            "float32".

    Call arguments:
        inputs: `[batch * num_frames, num_classes]` tensor.

    Input shape:
        `[batch * num_frames, num_classes]`.

    Output shape:
        `[batch, num_classes]`, float32.

    Example:

    >>> layer = SegmentConsensus(num_frames=4)
    >>> tuple(layer(keras.ops.ones((8, 10))).shape)
    (2, 10)
    """

    def __init__(self, num_frames: int, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(
                f"`num_frames` must be a positive integer. Received: num_frames={num_frames!r}."
            )
        self.num_frames = num_frames

    def build(self, input_shape):
        if len(input_shape) != 2 or input_shape[-1] is None:
            raise ValueError(
                "`SegmentConsensus` expects inputs of shape (batch * num_frames, "
                f"num_classes). Received: input_shape={tuple(input_shape)}."
            )
        if input_shape[0] is not None and input_shape[0] % self.num_frames:
            raise ValueError(
                f"The batch axis must be a multiple of num_frames={self.num_frames}. "
                f"Received: input_shape={tuple(input_shape)}."
            )
        self.built = True

    def call(self, inputs):
        per_frame = ops.reshape(
            ops.cast(inputs, "float32"), [-1, self.num_frames, inputs.shape[-1]]
        )
        return ops.mean(per_frame, axis=1)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.num_frames, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"num_frames": self.num_frames})
        return config
