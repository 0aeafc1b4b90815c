"""STSS transformation: downsampling convolution, then spatio-temporal self-similarity."""

from __future__ import annotations

import keras
from keras import ops

from selfy_tf import compat
from selfy_tf.layers import _batch_norm, _batch_norm_folding, _checks, _conv
from selfy_tf.layers._defaults import REFERENCE_CHANNELS
from selfy_tf.ops import DEFAULT_BACKEND, DEFAULT_WINDOW, STSS_BACKENDS, stss


@keras.saving.register_keras_serializable(package="selfy")
class STSSTransformation(keras.layers.Layer):
    """Turns backbone features into a spatio-temporal self-similarity volume.

    First stage of the SELFY block (Kwon et al., "Learning Self-Similarity in
    Space and Time as Generalized Motion for Video Action Recognition",
    ICCV 2021): a 3x3 stride-2 convolution with PyTorch-style symmetric
    padding of 1 (explicit zero padding, then a 'valid' convolution), no
    bias, batch norm and ReLU; then the frames are unfolded from the batch
    and the STSS op (`selfy_tf.ops.stss`) compares every position with its
    `(L, U, V)` neighbourhood in time and space. With `causal=True` the
    temporal window looks back only (offsets `-(L - 1) ... 0`, see
    `selfy_tf.ops.stss`); the weights are the same.

    Weights mirror the official `stss_transformation.downsample` module:
    `conv` is `downsample.0` and `bn` is `downsample.1`.

    Args:
        num_frames: int, frames per clip (`T`); the batch axis must be a
            multiple of it.
        hidden_channels: int, default 128, channels of the convolution
            (`d_hid` of the paper).
        window: three odd ints `(L, U, V)`, default `(5, 9, 9)`, the STSS
            window in frames, rows and columns.
        stss_backend: str, default "matmul", the `backend` of
            `selfy_tf.ops.stss`.
        batch_norm_momentum: float, default 0.9 (PyTorch momentum 0.1).
        batch_norm_epsilon: float, default 1e-5 (as PyTorch).
        sync_batchnorm: bool, default False, compute the training-mode
            batch norm statistics over the global batch (synchronized batch
            norm, see `FusedBatchNormalization`); inference is unaffected.
        batch_norm_statistics: str, default "exact", who computes the
            training-mode batch statistics: "exact" or "tensorflow" (the
            `training_statistics` of `FusedBatchNormalization`).
        causal: bool, default False, the causal STSS (frame `t` against
            frames `t - (L - 1) ... t`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch * num_frames, height, width, channels]` tensor.
        training: bool, batch norm in training mode when True.

    Input shape:
        `[batch * num_frames, height, width, channels]`.

    Output shape:
        `[batch, num_frames, ceil(height / 2), ceil(width / 2), L, U, V]`,
        in the layer's compute dtype (the STSS itself is computed in float32).

    Example:

    >>> layer = STSSTransformation(num_frames=2, hidden_channels=8, window=(3, 9, 9))
    >>> tuple(layer(keras.ops.ones((4, 8, 8, 16))).shape)
    (2, 2, 4, 4, 3, 9, 9)
    """

    def __init__(
        self,
        num_frames: int,
        hidden_channels: int = REFERENCE_CHANNELS["hidden_channels"],
        window: tuple[int, int, int] = DEFAULT_WINDOW,
        stss_backend: str = DEFAULT_BACKEND,
        batch_norm_momentum: float = _batch_norm.BATCH_NORM_MOMENTUM,
        batch_norm_epsilon: float = _batch_norm.BATCH_NORM_EPSILON,
        sync_batchnorm: bool = False,
        batch_norm_statistics: str = "exact",
        causal: bool = False,
        **kwargs,
    ):
        compat.drop_layer_stss_jit(kwargs)
        super().__init__(**kwargs)
        self.num_frames = _checks.check_positive_int("num_frames", num_frames)
        self.hidden_channels = _checks.check_positive_int(
            "hidden_channels", hidden_channels
        )
        self.window = _checks.check_window(window)
        if stss_backend not in STSS_BACKENDS:
            raise ValueError(
                f"`stss_backend` must be one of {STSS_BACKENDS}. "
                f"Received: stss_backend={stss_backend!r}."
            )
        self.stss_backend = stss_backend
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.sync_batchnorm = _checks.check_bool("sync_batchnorm", sync_batchnorm)
        self.batch_norm_statistics = _batch_norm.check_training_statistics(
            "batch_norm_statistics", batch_norm_statistics
        )
        self.causal = _checks.check_bool("causal", causal)
        self.conv = _conv.make_conv(
            self.hidden_channels, 3, 2, name="downsample_conv", dtype=self.dtype_policy
        )
        self.bn = _batch_norm.make_batch_norm(
            "downsample_bn",
            self.dtype_policy,
            self.batch_norm_momentum,
            self.batch_norm_epsilon,
            synchronized=self.sync_batchnorm,
            training_statistics=self.batch_norm_statistics,
        )

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                "`STSSTransformation` expects inputs of shape "
                "(batch * num_frames, height, width, channels) with known "
                f"channels. Received: input_shape={tuple(input_shape)}."
            )
        batch, height, width, channels = input_shape
        if batch is not None and batch % self.num_frames:
            raise ValueError(
                f"The batch axis of the input must be a multiple of "
                f"num_frames={self.num_frames}. Received: "
                f"input_shape={tuple(input_shape)}."
            )
        same = all(
            size is not None and _conv.same_matches_torch(size, 3, 2, 1)
            for size in (height, width)
        )
        self._padding = "SAME" if same else 1
        padded = (batch, _plus(height, 2), _plus(width, 2), channels)
        self.conv.build(padded)
        conv_shape = self.conv.compute_output_shape(padded)
        self.bn.build(conv_shape)
        self.built = True

    def downsample(self, inputs, training=None):
        """The STSS input features: conv, batch norm, ReLU of each frame.

        `[batch * num_frames, height, width, channels]` ->
        `[batch * num_frames, ceil(height / 2), ceil(width / 2), hidden_channels]`;
        frame by frame, so streaming runs it on one frame at a time.
        """
        return _batch_norm_folding.linear_batch_norm(
            ops.cast(inputs, self.compute_dtype),
            _conv.conv2d(2, self._padding, training),
            self.conv.kernel,
            self.bn,
            training,
            compute_dtype=self.compute_dtype,
        )

    def call(self, inputs, training=None):
        hidden = self.downsample(inputs, training=training)
        height, width = _conv.dim(hidden, 1), _conv.dim(hidden, 2)
        clips = ops.reshape(
            hidden, [-1, self.num_frames, height, width, self.hidden_channels]
        )
        similarity = stss(
            clips, window=self.window, backend=self.stss_backend, causal=self.causal
        )
        return ops.cast(similarity, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        return (
            None if batch is None else batch // self.num_frames,
            self.num_frames,
            _half(height),
            _half(width),
            *self.window,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_frames": self.num_frames,
                "hidden_channels": self.hidden_channels,
                "window": self.window,
                "stss_backend": self.stss_backend,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sync_batchnorm": self.sync_batchnorm,
                "batch_norm_statistics": self.batch_norm_statistics,
                "causal": self.causal,
            }
        )
        return config


def _plus(size: int | None, amount: int) -> int | None:
    return None if size is None else size + amount


def _half(size: int | None) -> int | None:
    # Output size of a 3x3 stride-2 convolution with padding 1.
    return None if size is None else (size - 1) // 2 + 1
