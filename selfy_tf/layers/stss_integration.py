"""STSS feature integration: spatio-temporal convolutions, fusion and upsampling."""

from __future__ import annotations

import keras
from keras import ops

from selfy_tf.layers import _batch_norm, _batch_norm_folding, _checks, _conv
from selfy_tf.layers._defaults import REFERENCE_CHANNELS


@keras.saving.register_keras_serializable(package="selfy")
class STSSIntegration(keras.layers.Layer):
    """Integrates the extracted STSS features into a motion feature map.

    Third stage of the SELFY block (Kwon et al., ICCV 2021). For each of the
    `L` temporal offsets separately, three (1, 3, 3) convolutions over
    (t, h, w) with padding (0, 1, 1), each followed by batch norm and ReLU;
    then the `L` groups are concatenated on channels (l-major: channel
    `l * channels[2] + c`) and fused by a (1, 3, 3) convolution + batch norm +
    ReLU; finally the reference's ConvTranspose3d with kernel 1, stride
    (1, 2, 2) and output padding (0, 1, 1) doubles height and width, followed
    by batch norm. That transposed convolution is a 1x1 convolution whose
    results land on the even rows and columns of a zero map, so odd positions
    carry only the batch norm shift, as in the reference. All (1, 3, 3)
    convolutions are 2-D convolutions over a batch that folds in the frames
    (and the offsets `l`).

    Weights mirror the official `stss_integration` module: `convs[i]` (named
    `conv{i}`) / `bns[i]` (`conv{i}_bn`) are `conv{i}.0` / `conv{i}.1` for
    i = 0, 1, 2; `fuse_conv` / `fuse_bn` are `conv3_fuse.1` / `conv3_fuse.2`;
    `upsample_conv` / `upsample_bn` are `upsample.0` / `upsample.1`.

    Args:
        output_channels: int, channels of the output (`d_in` of the block).
        channels: four ints, default `(64, 64, 64, 64)`, output channels of
            the three per-offset convolutions and of the fusion convolution.
        zero_init_last: bool, default True, initialise the gamma of the last
            batch norm to zero so that a residual block around this layer
            starts as the identity.
        batch_norm_momentum: float, default 0.9 (PyTorch momentum 0.1).
        batch_norm_epsilon: float, default 1e-5 (as PyTorch).
        sync_batchnorm: bool, default False, compute the training-mode
            batch norm statistics over the global batch (synchronized batch
            norm, see `FusedBatchNormalization`); inference is unaffected.
        batch_norm_statistics: str, default "exact", who computes the
            training-mode batch statistics: "exact" or "tensorflow" (the
            `training_statistics` of `FusedBatchNormalization`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch, num_frames, height, width, L, input_channels]` tensor.
        training: bool, batch norm in training mode when True.

    Input shape:
        `[batch, num_frames, height, width, L, input_channels]`.

    Output shape:
        `[batch * num_frames, 2 * height, 2 * width, output_channels]`.

    Example:

    >>> layer = STSSIntegration(output_channels=16, channels=(8, 8, 8, 8))
    >>> tuple(layer(keras.ops.ones((1, 2, 4, 4, 3, 8))).shape)
    (2, 8, 8, 16)
    """

    def __init__(
        self,
        output_channels: int,
        channels: tuple[int, int, int, int] = REFERENCE_CHANNELS["integration_channels"],
        zero_init_last: bool = True,
        batch_norm_momentum: float = _batch_norm.BATCH_NORM_MOMENTUM,
        batch_norm_epsilon: float = _batch_norm.BATCH_NORM_EPSILON,
        sync_batchnorm: bool = False,
        batch_norm_statistics: str = "exact",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.output_channels = _checks.check_positive_int(
            "output_channels", output_channels
        )
        self.channels = _checks.check_channels("channels", channels, 4)
        self.zero_init_last = bool(zero_init_last)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.sync_batchnorm = _checks.check_bool("sync_batchnorm", sync_batchnorm)
        self.batch_norm_statistics = _batch_norm.check_training_statistics(
            "batch_norm_statistics", batch_norm_statistics
        )

        def batch_norm(name, gamma_initializer="ones"):
            return _batch_norm.make_batch_norm(
                name,
                self.dtype_policy,
                self.batch_norm_momentum,
                self.batch_norm_epsilon,
                gamma_initializer=gamma_initializer,
                synchronized=self.sync_batchnorm,
                training_statistics=self.batch_norm_statistics,
            )

        self.convs = [
            _conv.make_conv(filters, 3, 1, name=f"conv{index}", dtype=self.dtype_policy)
            for index, filters in enumerate(self.channels[:3])
        ]
        self.bns = [batch_norm(f"conv{index}_bn") for index in range(3)]
        self.fuse_conv = _conv.make_conv(
            self.channels[3], 3, 1, name="conv3_fuse", dtype=self.dtype_policy
        )
        self.fuse_bn = batch_norm("conv3_fuse_bn")
        self.upsample_conv = _conv.make_conv(
            self.output_channels,
            1,
            1,
            name="upsample_conv",
            dtype=self.dtype_policy,
            kernel_initializer=_conv.torch_conv_transpose_initializer(),
        )
        self.upsample_bn = batch_norm(
            "upsample_bn", "zeros" if self.zero_init_last else "ones"
        )

    def build(self, input_shape):
        if len(input_shape) != 6 or input_shape[4] is None or input_shape[5] is None:
            raise ValueError(
                "`STSSIntegration` expects inputs of shape "
                "(batch, num_frames, height, width, L, channels) with known L "
                f"and channels. Received: input_shape={tuple(input_shape)}."
            )
        _, _, height, width, length, channels = input_shape
        padded = (None, _plus(height, 2), _plus(width, 2), channels)
        for conv, bn in zip(self.convs, self.bns):
            conv.build(padded)
            shape = conv.compute_output_shape(padded)
            bn.build(shape)
            padded = (None, _plus(height, 2), _plus(width, 2), shape[-1])
        fused = (None, padded[1], padded[2], length * self.channels[2])
        self.fuse_conv.build(fused)
        shape = self.fuse_conv.compute_output_shape(fused)
        self.fuse_bn.build(shape)
        self.upsample_conv.build(shape)
        self.upsample_bn.build(self.compute_output_shape(input_shape))
        self.built = True

    def call(self, inputs, training=None):
        length = inputs.shape[4]
        height, width = _conv.dim(inputs, 2), _conv.dim(inputs, 3)
        dtype = self.compute_dtype
        # Each (1, 3, 3) convolution is a 'SAME' 2-D convolution over folded
        # frames ('SAME' equals PyTorch's symmetric padding 1 at stride 1).
        conv = _conv.conv2d(1, "SAME", training)
        # [B, T, h, w, L, C] -> [B * T * L, h, w, C]: each offset l separately.
        maps = ops.transpose(ops.cast(inputs, dtype), [0, 1, 4, 2, 3, 5])
        maps = ops.reshape(maps, [-1, height, width, inputs.shape[5]])
        for layer, bn in zip(self.convs, self.bns):
            maps = _batch_norm_folding.linear_batch_norm(
                maps, conv, layer.kernel, bn, training, compute_dtype=dtype
            )
        # Back to one map per frame with the L groups on channels, l-major.
        maps = ops.reshape(maps, [-1, length, height, width, self.channels[2]])
        maps = ops.transpose(maps, [0, 2, 3, 1, 4])
        maps = ops.reshape(maps, [-1, height, width, length * self.channels[2]])
        maps = _batch_norm_folding.linear_batch_norm(
            maps, conv, self.fuse_conv.kernel, self.fuse_bn, training, compute_dtype=dtype
        )

        def upsample(maps, kernel):
            return _interleave_zeros(_conv.conv2d(1, "VALID", training)(maps, kernel))

        return _batch_norm_folding.linear_batch_norm(
            maps,
            upsample,
            self.upsample_conv.kernel,
            self.upsample_bn,
            training,
            relu=False,
            compute_dtype=dtype,
        )

    def compute_output_shape(self, input_shape):
        batch, num_frames, height, width = tuple(input_shape)[:4]
        return (
            None if batch is None or num_frames is None else batch * num_frames,
            None if height is None else 2 * height,
            None if width is None else 2 * width,
            self.output_channels,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_channels": self.output_channels,
                "channels": self.channels,
                "zero_init_last": self.zero_init_last,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sync_batchnorm": self.sync_batchnorm,
                "batch_norm_statistics": self.batch_norm_statistics,
            }
        )
        return config


def _interleave_zeros(maps):
    """Puts `[N, h, w, C]` on the even rows and columns of a `[N, 2h, 2w, C]` zero map.

    One 5-D pad (`[N * h, 1, w, 1, C]` -> `[N * h, 2, w, 2, C]`) and reshapes,
    which TFLite supports as builtins.
    """
    height, width = _conv.dim(maps, 1), _conv.dim(maps, 2)
    channels = maps.shape[-1]
    cells = ops.reshape(maps, [-1, 1, width, 1, channels])
    cells = ops.pad(cells, [[0, 0], [0, 1], [0, 0], [0, 1], [0, 0]])
    return ops.reshape(cells, [-1, 2 * height, 2 * width, channels])


def _plus(size: int | None, amount: int) -> int | None:
    return None if size is None else size + amount
