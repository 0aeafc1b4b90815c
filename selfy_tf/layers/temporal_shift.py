"""Temporal shift (TSM) on frames folded into the batch axis."""

from __future__ import annotations

import keras
from keras import ops

from selfy_tf.layers import _checks, _conv
from selfy_tf.ops import _backend


@keras.saving.register_keras_serializable(package="selfy")
class TemporalShift(keras.layers.Layer):
    """Shifts part of the channels one frame forward and one frame backward.

    The temporal shift module of TSM (Lin, Gan, Han, ICCV 2019), as the TSM
    backbone of SELFY uses it at the start of every residual branch. The
    frames of each clip are folded into the batch axis and must be contiguous
    (`[clip0_frame0, clip0_frame1, ..., clip1_frame0, ...]`). With
    `c = channels // fold_div`, channels `[0, c)` take the value of the next
    frame (the last frame gets zeros), channels `[c, 2c)` take the previous
    frame (the first frame gets zeros) and the others are left unchanged. The
    layer has no weights.

    With `causal=True` (TSM's online shift, for streaming) channels `[0, c)`
    take the value of the previous frame (the first frame gets zeros) and all
    the others are left unchanged, so no output depends on a later frame.

    Args:
        num_frames: int, frames per clip (`T`); the batch axis must be a
            multiple of it.
        fold_div: int, default 8; `1 / fold_div` of the channels moves in each
            direction. Must be at least 2.
        causal: bool, default False, shift channels `[0, c)` from the
            previous frame only (see above).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch * num_frames, height, width, channels]` tensor.

    Input shape:
        `[batch * num_frames, height, width, channels]`.

    Output shape:
        Same as the input.

    Example:

    >>> layer = TemporalShift(num_frames=4)
    >>> tuple(layer(keras.ops.ones((8, 7, 7, 16))).shape)
    (8, 7, 7, 16)
    """

    def __init__(self, num_frames: int, fold_div: int = 8, causal: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(fold_div, bool) or not isinstance(fold_div, int) or fold_div < 2:
            raise ValueError(
                "`fold_div` must be an integer >= 2 (channels / fold_div move in "
                f"each direction). Received: fold_div={fold_div!r}. Try fold_div=8."
            )
        self.num_frames = _checks.check_positive_int("num_frames", num_frames)
        self.fold_div = int(fold_div)
        self.causal = _checks.check_bool("causal", causal)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "`TemporalShift` expects inputs of shape "
                "(batch * num_frames, height, width, channels). "
                f"Received: input_shape={tuple(input_shape)}."
            )
        batch = input_shape[0]
        if batch is not None and batch % self.num_frames:
            raise ValueError(
                f"The batch axis of the input must be a multiple of "
                f"num_frames={self.num_frames}. Received: "
                f"input_shape={tuple(input_shape)}."
            )
        self.built = True

    def call(self, inputs):
        channels = inputs.shape[-1]
        fold = channels // self.fold_div
        if fold == 0:
            return inputs
        height, width = _conv.dim(inputs, 1), _conv.dim(inputs, 2)
        clips = ops.reshape(inputs, [-1, self.num_frames, height, width, channels])
        return ops.reshape(_shift_clips(clips, fold, self.causal), ops.shape(inputs))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_frames": self.num_frames, "fold_div": self.fold_div, "causal": self.causal}
        )
        return config


def _from_next(clips, start: int, stop: int):
    """Channels [start, stop) of frame t + 1 at frame t; zeros at the last frame."""
    return ops.pad(clips[:, 1:, :, :, start:stop], [[0, 0], [0, 1], [0, 0], [0, 0], [0, 0]])


def _from_previous(clips, start: int, stop: int):
    """Channels [start, stop) of frame t - 1 at frame t; zeros at the first frame."""
    return ops.pad(clips[:, :-1, :, :, start:stop], [[0, 0], [1, 0], [0, 0], [0, 0], [0, 0]])


def _shift(clips, fold: int, backward: bool):
    """Channels [0, fold) from frame t + 1 and [fold, 2 fold) from t - 1.

    With `backward` the directions swap: the transpose of the shift, i.e. its
    gradient. Pad + slice + concat, which TFLite runs as builtins.
    """
    first, second = (_from_previous, _from_next) if backward else (_from_next, _from_previous)
    parts = [first(clips, 0, fold), second(clips, fold, 2 * fold), clips[..., 2 * fold :]]
    return ops.concatenate(parts, -1)


def _causal_shift(clips, fold: int, backward: bool):
    """Channels [0, fold) from frame t - 1 (from t + 1 when `backward`: the gradient)."""
    source = _from_next if backward else _from_previous
    return ops.concatenate([source(clips, 0, fold), clips[..., fold:]], -1)


def _shift_clips(clips, fold: int, causal: bool = False):
    """The temporal shift of `[clips, T, H, W, C]` (the causal one when `causal`).

    On TensorFlow its gradient is written out: TensorFlow's own goes through
    StridedSliceGrad, much slower on CPU than shifting the upstream
    gradient the other way (benchmarks/README.md, "Model inference"). Other backends differentiate the slices.
    """
    function = _causal_shift if causal else _shift
    if not _backend.is_tensorflow():
        return function(clips, fold, backward=False)

    @ops.custom_gradient
    def shift(clips):
        def grad(upstream):
            return function(upstream, fold, backward=True)

        return function(clips, fold, backward=False), grad

    return shift(clips)
