"""The SELFY block: self-similarity as generalized motion, added back as a residual."""

from __future__ import annotations

import keras
from keras import ops

from selfy_tf import compat
from selfy_tf.layers import _batch_norm, _checks, _conv
from selfy_tf.layers._defaults import NUM_FRAMES, REFERENCE_CHANNELS
from selfy_tf.layers.stss_extraction import STSSExtraction
from selfy_tf.layers.stss_integration import STSSIntegration
from selfy_tf.layers.stss_transformation import STSSTransformation
from selfy_tf.ops import DEFAULT_BACKEND, DEFAULT_WINDOW, STSS_BACKENDS


@keras.saving.register_keras_serializable(package="selfy")
class SELFYBlock(keras.layers.Layer):
    """The SELFY block: learned motion from spatio-temporal self-similarity.

    Kwon, Kim, Kwak, Cho, "Learning Self-Similarity in Space and Time as
    Generalized Motion for Video Action Recognition", ICCV 2021. Inserted
    after a backbone stage, it computes the spatio-temporal self-similarity
    (STSS) of a downsampled copy of its input (`STSSTransformation`), turns
    each position's similarity volume into a feature (`STSSExtraction`),
    integrates those over space and time and upsamples back
    (`STSSIntegration`), and adds the result to its input:
    `relu(inputs + integration)`. With `zero_init_last=True` the block starts
    as `relu(inputs)`.

    With `causal=True` the STSS looks back only (frame `t` against frames
    `t - (L - 1) ... t`); no other part of the block mixes frames (the
    extraction works on each position's own similarity volume, the
    integration convolutions are (1, 3, 3)), so the causal block's output at
    frame `t` depends on frames up to `t` only. The weights are the same.

    Weights mirror the official PyTorch `SELFYBlock`
    (`selfy_tf.weights.selfy_block_mapping` lists the correspondence).

    Args:
        num_frames: int, default 8, frames per clip (`T`); the batch axis
            must be a multiple of it.
        hidden_channels: int, default 128, channels the input is reduced to
            before the STSS (`d_hid`).
        window: three odd ints `(L, U, V)`, default `(5, 9, 9)`, the STSS
            window; `U` and `V` must each be 9 or 11 (the extraction
            convolutions reduce them to 1).
        extraction_channels: four ints, default `(4, 16, 64, 64)`, channels
            of the extraction convolutions.
        integration_channels: four ints, default `(64, 64, 64, 64)`,
            channels of the three integration convolutions and of the fusion
            convolution.
        stss_backend: str, default "matmul", the `backend` of
            `selfy_tf.ops.stss`.
        zero_init_last: bool, default True, zero-initialise the gamma of the
            last batch norm so that the block starts as the identity (up to
            the final ReLU).
        batch_norm_momentum: float, default 0.9 (PyTorch momentum 0.1).
        batch_norm_epsilon: float, default 1e-5 (as PyTorch).
        sync_batchnorm: bool, default False, synchronized batch norm in all
            three stages: training-mode statistics are computed over the
            global batch (see `FusedBatchNormalization`); inference is
            unaffected.
        batch_norm_statistics: str, default "exact", who computes the
            training-mode batch statistics in all three stages: "exact" or
            "tensorflow" (the `training_statistics` of
            `FusedBatchNormalization`).
        causal: bool, default False, the causal STSS (see above).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `[batch * num_frames, height, width, channels]` tensor, the
            frames of each clip contiguous.
        training: bool, batch norm in training mode when True.

    Input shape:
        `[batch * num_frames, height, width, channels]` with even `height`
        and `width` (28x28x512 after res3 of a ResNet-50 at 224x224).

    Output shape:
        Same as the input.

    Example:

    >>> block = SELFYBlock(num_frames=2, hidden_channels=8, window=(3, 9, 9),
    ...                    extraction_channels=(2, 4, 8, 8),
    ...                    integration_channels=(8, 8, 8, 8))
    >>> tuple(block(keras.ops.ones((4, 8, 8, 16))).shape)
    (4, 8, 8, 16)
    """

    def __init__(
        self,
        num_frames: int = NUM_FRAMES,
        hidden_channels: int = REFERENCE_CHANNELS["hidden_channels"],
        window: tuple[int, int, int] = DEFAULT_WINDOW,
        extraction_channels: tuple[int, int, int, int] = REFERENCE_CHANNELS["extraction_channels"],
        integration_channels: tuple[int, int, int, int] = REFERENCE_CHANNELS["integration_channels"],
        stss_backend: str = DEFAULT_BACKEND,
        zero_init_last: bool = True,
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
        if any(_conv.extraction_output_size(size) != 1 for size in self.window[1:]):
            raise ValueError(
                "The spatial sizes (U, V) of `window` must each be 9 or 11, the "
                "sizes that the extraction convolutions reduce to 1. "
                f"Received: window={window!r}. Try window={DEFAULT_WINDOW}."
            )
        self.extraction_channels = _checks.check_channels(
            "extraction_channels", extraction_channels, 4
        )
        self.integration_channels = _checks.check_channels(
            "integration_channels", integration_channels, 4
        )
        if stss_backend not in STSS_BACKENDS:
            raise ValueError(
                f"`stss_backend` must be one of {STSS_BACKENDS}. "
                f"Received: stss_backend={stss_backend!r}."
            )
        self.stss_backend = stss_backend
        self.zero_init_last = bool(zero_init_last)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.sync_batchnorm = _checks.check_bool("sync_batchnorm", sync_batchnorm)
        self.batch_norm_statistics = _batch_norm.check_training_statistics(
            "batch_norm_statistics", batch_norm_statistics
        )
        self.causal = _checks.check_bool("causal", causal)
        batch_norm_args = {
            "batch_norm_momentum": self.batch_norm_momentum,
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "sync_batchnorm": self.sync_batchnorm,
            "batch_norm_statistics": self.batch_norm_statistics,
            "dtype": self.dtype_policy,
        }
        self.stss_transformation = STSSTransformation(
            self.num_frames,
            self.hidden_channels,
            self.window,
            stss_backend=self.stss_backend,
            causal=self.causal,
            name="stss_transformation",
            **batch_norm_args,
        )
        self.stss_extraction = STSSExtraction(
            self.extraction_channels, name="stss_extraction", **batch_norm_args
        )
        self.stss_integration = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) != 4 or any(size is None for size in input_shape[1:]):
            raise ValueError(
                "`SELFYBlock` expects inputs of shape "
                "(batch * num_frames, height, width, channels) with known height, "
                f"width and channels. Received: input_shape={input_shape}."
            )
        batch, height, width, channels = input_shape
        if height % 2 or width % 2:
            raise ValueError(
                "`SELFYBlock` needs an even input height and width (the block "
                "downsamples by 2 and upsamples back). Received: "
                f"input_shape={input_shape}."
            )
        if batch is not None and batch % self.num_frames:
            raise ValueError(
                f"The batch axis of the input must be a multiple of "
                f"num_frames={self.num_frames}. Received: input_shape={input_shape}."
            )
        self.stss_integration = STSSIntegration(
            channels,
            self.integration_channels,
            zero_init_last=self.zero_init_last,
            name="stss_integration",
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            sync_batchnorm=self.sync_batchnorm,
            batch_norm_statistics=self.batch_norm_statistics,
            dtype=self.dtype_policy,
        )
        self.stss_transformation.build(input_shape)
        shape = self.stss_transformation.compute_output_shape(input_shape)
        self.stss_extraction.build(shape)
        shape = self.stss_extraction.compute_output_shape(shape)
        self.stss_integration.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        similarity = self.stss_transformation(inputs, training=training)
        features = self.stss_extraction(similarity, training=training)
        motion = self.stss_integration(features, training=training)
        return ops.relu(inputs + ops.cast(motion, inputs.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_frames": self.num_frames,
                "hidden_channels": self.hidden_channels,
                "window": self.window,
                "extraction_channels": self.extraction_channels,
                "integration_channels": self.integration_channels,
                "stss_backend": self.stss_backend,
                "zero_init_last": self.zero_init_last,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sync_batchnorm": self.sync_batchnorm,
                "batch_norm_statistics": self.batch_norm_statistics,
                "causal": self.causal,
            }
        )
        return config
