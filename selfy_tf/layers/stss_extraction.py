"""STSS feature extraction: small convolutions over each (l, u, v) volume."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from selfy_tf.layers import _batch_norm, _batch_norm_folding, _checks, _conv
from selfy_tf.layers._defaults import REFERENCE_CHANNELS
from selfy_tf.ops import _backend

# (stride, padding) of the four (1, 3, 3) convolutions of the reference.
_CONV_GEOMETRY = ((1, 1), (2, 1), (2, 1), (1, 0))


class _Conv1Bands:
    """Index tables that compute conv1 (3x3, stride 2, pad 1) row by row with matrix products.

    Output row `i` of conv1 reads rows `2i - 1, 2i, 2i + 1` of its input (zero
    outside the map): its "band". Attributes:
        rows: int `[out_rows * 3 * width]`, for each band entry `(i, r, x)` the
            input position `y * width + x` with `y = 2i - 1 + r`, or
            `height * width` (an all-zero position) outside the map.
        inside: float `[out_rows * 3 * width]`, 1 where `rows` is inside.
        columns: float `[3, width, out_cols]`, `columns[dx, x, j] = 1` when
            output column `j` reads input column `x` with kernel column `dx`.
    """

    def __init__(self, height: int, width: int):
        self.out_rows = (height - 1) // 2 + 1
        self.out_cols = (width - 1) // 2 + 1
        band_rows = 2 * np.arange(self.out_rows)[:, None] - 1 + np.arange(3)[None, :]
        inside_rows = (band_rows >= 0) & (band_rows < height)
        positions = band_rows[:, :, None] * width + np.arange(width)[None, None, :]
        self.rows = np.where(inside_rows[:, :, None], positions, height * width)
        self.rows = self.rows.reshape(-1).astype(np.int32)
        self.inside = np.repeat(inside_rows, width).astype(np.float32)
        self.columns = np.zeros((3, width, self.out_cols), np.float32)
        for j in range(self.out_cols):
            for dx in range(3):
                if 0 <= 2 * j - 1 + dx < width:
                    self.columns[dx, 2 * j - 1 + dx, j] = 1


@keras.saving.register_keras_serializable(package="selfy")
class STSSExtraction(keras.layers.Layer):
    """Extracts a motion feature from the self-similarity volume of each position.

    Second stage of the SELFY block (Kwon et al., ICCV 2021). Each position's
    `(L, U, V)` self-similarity volume is treated as a one-channel 3-D image,
    and four convolutions with kernel (1, 3, 3) over (l, u, v), each followed
    by batch norm and ReLU, reduce every `(U, V)` displacement map to one
    feature vector: strides 1, 2, 2, 1 and paddings 1, 1, 1, 0 over (u, v), so
    a 9x9 window goes 9 → 9 → 5 → 3 → 1. As the kernels are 1 along l, they
    are applied as 2-D convolutions to the `batch * frames * height * width *
    L` displacement maps, which gives the same result as the reference's
    Conv3d. The first and last are matrix products on flattened maps; at
    inference, with the batch norms folded, so is the second (row by row).

    Weights mirror the official `stss_extraction` module: `convs[i]` (named
    `conv{i}`) is `conv{i}.0` and `bns[i]` (named `conv{i}_bn`) is `conv{i}.1`.

    Args:
        channels: four ints, default `(4, 16, 64, 64)`, output channels of
            the four convolutions.
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
        inputs: `[batch, num_frames, height, width, L, U, V]` tensor.
        training: bool, batch norm in training mode when True.

    Input shape:
        `[batch, num_frames, height, width, L, U, V]`; `U` and `V` must each
        be 9 or 11 (the sizes that the convolutions reduce to 1).

    Output shape:
        `[batch, num_frames, height, width, L, channels[-1]]`.

    Example:

    >>> layer = STSSExtraction(channels=(2, 4, 8, 8))
    >>> tuple(layer(keras.ops.ones((1, 2, 3, 3, 5, 9, 9))).shape)
    (1, 2, 3, 3, 5, 8)
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = REFERENCE_CHANNELS["extraction_channels"],
        batch_norm_momentum: float = _batch_norm.BATCH_NORM_MOMENTUM,
        batch_norm_epsilon: float = _batch_norm.BATCH_NORM_EPSILON,
        sync_batchnorm: bool = False,
        batch_norm_statistics: str = "exact",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = _checks.check_channels("channels", channels, 4)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.sync_batchnorm = _checks.check_bool("sync_batchnorm", sync_batchnorm)
        self.batch_norm_statistics = _batch_norm.check_training_statistics(
            "batch_norm_statistics", batch_norm_statistics
        )
        self.convs = []
        self.bns = []
        for index, (filters, (stride, _)) in enumerate(
            zip(self.channels, _CONV_GEOMETRY)
        ):
            self.convs.append(
                _conv.make_conv(
                    filters, 3, stride, name=f"conv{index}", dtype=self.dtype_policy
                )
            )
            self.bns.append(
                _batch_norm.make_batch_norm(
                    f"conv{index}_bn",
                    self.dtype_policy,
                    self.batch_norm_momentum,
                    self.batch_norm_epsilon,
                    synchronized=self.sync_batchnorm,
                    training_statistics=self.batch_norm_statistics,
                )
            )

    def build(self, input_shape):
        if len(input_shape) != 7:
            raise ValueError(
                "`STSSExtraction` expects inputs of shape "
                "(batch, num_frames, height, width, L, U, V). "
                f"Received: input_shape={tuple(input_shape)}."
            )
        height_window, width_window = input_shape[5], input_shape[6]
        for size in (height_window, width_window):
            if size is None or _conv.extraction_output_size(size) != 1:
                raise ValueError(
                    "The STSS window sizes U and V (the last two input axes) "
                    "must each be 9 or 11, the sizes that the extraction "
                    "convolutions reduce to 1. Received: "
                    f"input_shape={tuple(input_shape)}."
                )
        shape = (None, height_window, width_window, 1)
        self._paddings = []
        for conv, bn, (stride, padding) in zip(self.convs, self.bns, _CONV_GEOMETRY):
            same = all(
                _conv.same_matches_torch(size, 3, stride, padding)
                for size in shape[1:3]
            )
            self._paddings.append("SAME" if same else padding)
            padded = (None, shape[1] + 2 * padding, shape[2] + 2 * padding, shape[3])
            conv.build(padded)
            shape = conv.compute_output_shape(padded)
            # The last convolution is applied as a matrix product on vectors.
            bn.build(shape if conv is not self.convs[-1] else (None, shape[-1]))
        self._conv0_selection = _conv.unrolled_conv_selection(
            height_window, width_window
        )
        self._conv1_bands = _Conv1Bands(height_window, width_window)
        self.built = True

    def call(self, inputs, training=None):
        height_window, width_window = inputs.shape[5], inputs.shape[6]
        positions = height_window * width_window

        # conv0 has one input channel: as one dense [U*V, U*V*c0] matrix it is
        # a single matrix product, which CPU kernels run much faster than a
        # one-channel convolution.
        # Its output stays flat until after the bias and ReLU, which fuse.
        def conv0(maps, kernel):
            return ops.matmul(maps, ops.reshape(self._conv0_matrix(kernel), [positions, -1]))

        # conv3 covers the whole 3x3 map: a matrix product on flattened maps.
        def conv3(maps, kernel):
            size = 9 * kernel.shape[2]
            return ops.matmul(ops.reshape(maps, [-1, size]), ops.reshape(kernel, [size, -1]))

        linears = [
            conv0,
            _conv.conv2d(2, self._paddings[1], training),
            _conv.conv2d(2, self._paddings[2], training),
            conv3,
        ]
        maps = ops.reshape(ops.cast(inputs, self.compute_dtype), [-1, positions])
        first = 0
        if not any(training and bn.trainable for bn in self.bns[:2]):
            maps = self._folded_conv0_conv1(maps)
            first = 2
        for index in range(first, 4):
            maps = _batch_norm_folding.linear_batch_norm(
                maps,
                linears[index],
                self.convs[index].kernel,
                self.bns[index],
                training,
                compute_dtype=self.compute_dtype,
                flat_map_shape=(height_window, width_window) if index == 0 else None,
            )
        return ops.reshape(maps, [*ops.shape(inputs)[:5], self.channels[-1]])

    def _conv0_matrix(self, kernel):
        """conv0 (3x3, pad 1, one input channel) as a dense `[U*V, U*V, c0]` tensor."""
        selection = ops.convert_to_tensor(self._conv0_selection, kernel.dtype)
        return ops.einsum("yxo,yxpq->pqo", kernel[:, :, 0, :], selection)

    def _folded_conv0_conv1(self, maps):
        """conv0 and conv1 with their batch norms folded in, as two matrix products.

        Convolution kernels are slow on conv1's maps of a few channels.
        Instead conv0's dense matrix writes, for every output row of conv1,
        the three rows of conv0's output that it reads (zeros outside the
        map: zero weights and bias), and conv1 is one matrix product per
        output row with a banded `[3 * V * c0, V1 * c1]` matrix: twice the
        multiply-accumulates of the two convolutions, but a third less time
        (2-core CPU, 8 frames of 28 x 28 x 512).

        Args:
            maps: `[N, U * V]` flattened similarity maps.

        Returns:
            conv1's batch-normalized, rectified output `[N, U1, V1, c1]`.
        """
        bands = self._conv1_bands
        dtype = self.compute_dtype
        positions = maps.shape[-1]
        width = bands.columns.shape[1]
        scale, bias = _batch_norm_folding.folded_batch_norm(self.bns[0])
        matrix = self._conv0_matrix(ops.cast(self.convs[0].kernel, "float32") * scale)
        matrix = ops.take(ops.pad(matrix, [[0, 0], [0, 1], [0, 0]]), bands.rows, axis=1)
        bias = bands.inside[:, None] * bias
        hidden = ops.matmul(maps, ops.cast(ops.reshape(matrix, [positions, -1]), dtype))
        hidden = ops.relu(
            _backend.bias_add(hidden, ops.cast(ops.reshape(bias, [-1]), dtype))
        )
        hidden = ops.reshape(hidden, [-1, 3 * width * self.channels[0]])

        scale, bias = _batch_norm_folding.folded_batch_norm(self.bns[1])
        kernel = ops.cast(self.convs[1].kernel, "float32") * scale
        matrix = ops.einsum("rdco,dxj->rxcjo", kernel, bands.columns)
        matrix = ops.reshape(matrix, [3 * width * self.channels[0], -1])
        outputs = ops.matmul(hidden, ops.cast(matrix, dtype))
        bias = ops.tile(bias, [bands.out_cols])
        outputs = ops.relu(_backend.bias_add(outputs, ops.cast(bias, dtype)))
        return ops.reshape(outputs, [-1, bands.out_rows, bands.out_cols, self.channels[1]])

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:5], self.channels[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "channels": self.channels,
                "batch_norm_momentum": self.batch_norm_momentum,
                "batch_norm_epsilon": self.batch_norm_epsilon,
                "sync_batchnorm": self.sync_batchnorm,
                "batch_norm_statistics": self.batch_norm_statistics,
            }
        )
        return config
