"""Frame preprocessing inside the model: rescale, normalise, fold frames into the batch."""

from __future__ import annotations

from typing import Sequence

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="selfy")
class FramePreprocessing(keras.layers.Layer):
    """Turns RGB clips in 0..255 into normalised frames folded into the batch.

    The first layer of every model of the zoo, so that served, converted and
    exported models need no preprocessing outside the model. Any real or
    integer input dtype is accepted (e.g. `uint8` frames); the arithmetic is
    done in float32 and the result is cast to the layer's compute dtype.
    Frames are folded into the batch axis clip by clip
    (`[clip0_frame0, clip0_frame1, ..., clip1_frame0, ...]`), the layout the
    2-D backbone and `TemporalShift` expect.

    Args:
        num_frames: int, frames per clip.
        scale: float, default 255.0, the input value that maps to 1.0.
        mean: three floats, default the ImageNet mean `(0.485, 0.456, 0.406)`,
            subtracted after rescaling to [0, 1].
        std: three floats, default the ImageNet std `(0.229, 0.224, 0.225)`,
            divided by after subtracting the mean.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, num_frames, height, width, 3]` tensor, values 0..scale.

    Input shape:
        `[batch, num_frames, height, width, channels]`.

    Output shape:
        `[batch * num_frames, height, width, channels]`.

    Example:

    >>> layer = FramePreprocessing(num_frames=2)
    >>> tuple(layer(keras.ops.zeros((3, 2, 8, 8, 3), dtype="uint8")).shape)
    (6, 8, 8, 3)
    """

    def __init__(
        self,
        num_frames: int,
        scale: float = 255.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(
                f"`num_frames` must be a positive integer. Received: num_frames={num_frames!r}."
            )
        self.num_frames = num_frames
        self.scale = float(scale)
        self.mean = tuple(float(value) for value in mean)
        self.std = tuple(float(value) for value in std)
        if len(self.mean) != len(self.std):
            raise ValueError(
                "`mean` and `std` must have one value per channel each. Received: "
                f"mean={self.mean}, std={self.std}."
            )
        if self.scale <= 0 or any(value <= 0 for value in self.std):
            raise ValueError(
                f"`scale` and `std` must be positive. Received: scale={self.scale}, "
                f"std={self.std}."
            )

    def build(self, input_shape):
        if len(input_shape) != 5 or input_shape[-1] != len(self.mean):
            raise ValueError(
                "`FramePreprocessing` expects clips of shape (batch, num_frames, "
                f"height, width, {len(self.mean)}). Received: "
                f"input_shape={tuple(input_shape)}."
            )
        if input_shape[1] is not None and input_shape[1] != self.num_frames:
            raise ValueError(
                f"The clips have {input_shape[1]} frames but the model was built for "
                f"num_frames={self.num_frames}. Received: input_shape={tuple(input_shape)}."
            )
        self.built = True

    def call(self, inputs):
        frames = ops.cast(inputs, "float32")
        mean = ops.convert_to_tensor(self.mean, "float32")
        std = ops.convert_to_tensor(self.std, "float32")
        normalized = (frames / self.scale - mean) / std
        folded = ops.reshape(normalized, [-1, *ops.shape(normalized)[2:]])
        return ops.cast(folded, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (
            None if batch is None else batch * self.num_frames,
            *tuple(input_shape[2:]),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_frames": self.num_frames,
                "scale": self.scale,
                "mean": self.mean,
                "std": self.std,
            }
        )
        return config
