"""The batch norm of every layer and model: `FusedBatchNormalization`.

Training-mode statistics either exact (shifted, blocked float32 sums, with an
optional all-reduce across replicas: synchronized batch norm) or computed by
TensorFlow's fused training kernel; inference as one fused TensorFlow op or
the folded affine map (`_batch_norm_folding`).
"""

from __future__ import annotations

import keras
from keras import ops

from selfy_tf.layers._batch_norm_folding import folded_batch_norm
from selfy_tf.ops import _backend

# PyTorch BatchNorm defaults: eps 1e-5, momentum 0.1 (Keras momentum 0.9).
BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9

# Who computes training-mode statistics (`FusedBatchNormalization`):
# "exact": shifted block sums (`batch_moments`), on every backend;
# "tensorflow": TensorFlow's fused training kernel, where it applies.
TRAINING_STATISTICS = ("exact", "tensorflow")


def check_training_statistics(name: str, value: object) -> str:
    """`value` if it is one of `TRAINING_STATISTICS`, else a ValueError naming `name`."""
    if value not in TRAINING_STATISTICS:
        raise ValueError(
            f"`{name}` must be one of {TRAINING_STATISTICS}. Received: {name}={value!r}. "
            f"Try {name}='exact'."
        )
    return str(value)


# Rows summed in one block by `_exact_sum`; the partial sums are summed again.
_SUM_BLOCK = 256
# Rows whose mean is the shift of the batch statistics (`_shift_estimate`).
_SHIFT_ROWS = 256


def _exact_sum(rows):
    """Float32 column sums of `[n, C]` rows, precise for millions of rows.

    TensorFlow's CPU kernels sum a column in one running float32 total,
    whose error grows with the number of rows (about 1e-3 relative at 2 M
    rows), and XLA may merge nested reductions into one. Here blocks of
    `_SUM_BLOCK` rows are summed by a matrix product with a vector of ones
    (blocked accumulation, and neither backend rewrites it into a plain
    reduction), then the block sums likewise, until one block is left: the
    error stays near float32 rounding, at the cost of a padding copy when
    `n` is not a multiple of the block (tiny after the first level).
    """
    channels = rows.shape[-1]
    ones = ops.ones([1, 1, _SUM_BLOCK], rows.dtype)
    # Three levels leave n / 256**3 rows: a few at most, also when n is
    # unknown while tracing (TensorFlow graph with a dynamic batch).
    for _ in range(3):
        if rows.shape[0] is not None and rows.shape[0] <= _SUM_BLOCK:
            break
        if rows.shape[0] is None or rows.shape[0] % _SUM_BLOCK:
            missing = (-ops.shape(rows)[0]) % _SUM_BLOCK
            rows = ops.pad(rows, [[0, missing], [0, 0]])
        blocks = ops.reshape(rows, [-1, _SUM_BLOCK, channels])
        rows = ops.reshape(_backend.matmul(ones, blocks), [-1, channels])
    return ops.sum(rows, axis=0)


def _identity(tensor):
    return tensor


def _shift_estimate(rows):
    """A rough per-channel mean of `[n, C]` rows: the mean of the first rows.

    Statistics of `rows - shift` lose no precision to a large mean (the
    float32 `E[x^2] - E[x]^2` of a channel with mean 100 and std 1 keeps no
    correct digit); any shift near the mean will do.
    """
    return ops.stop_gradient(ops.mean(rows[:_SHIFT_ROWS], axis=0))


def batch_moments(rows, total=None):
    """Exact float32 `(mean, variance, count)` of `[n, C]` rows over axis 0.

    Shifted two-pass sums (`_shift_estimate`, `_exact_sum`): within a few
    float32 roundings of the float64 statistics for millions of rows and
    means far larger than the spread. The result carries no gradient.

    Args:
        rows: `[n, C]` float32 tensor.
        total: optional `sum(tensor) -> tensor` that sums across replicas
            (synchronized batch norm); the shift is then averaged too.
    """
    rows = ops.stop_gradient(rows)
    shift = _shift_estimate(rows)
    count = ops.cast(ops.shape(rows)[0], "float32")
    if total is None:
        total = _identity
    else:
        # Every replica must subtract the same shift.
        shift = total(shift) / total(ops.ones([1], "float32"))
    wide = _WideRows(rows)
    centered_sum = wide.channel_sums(wide.rows - wide.tile(shift))
    sums = total(ops.concatenate([centered_sum, ops.reshape(count, [1])], 0))
    count = sums[-1]
    mean = shift + sums[:-1] / count
    squares = _backend.squared_difference(wide.rows, wide.tile(mean))
    variance = total(wide.channel_sums(squares)) / count
    return mean, variance, count


# Narrow rows ([n, 4] in the STSS extraction) are viewed at least this wide
# for the element-wise passes of the statistics: TensorFlow's broadcasting
# kernels are several times slower on 4-wide rows (benchmarks/README.md).
_WIDE_COLUMNS = 128


class _WideRows:
    """`[n, C]` rows viewed as `[n / k, k * C]` (k consecutive rows per row).

    `k` is the largest power of two with `k * C <= _WIDE_COLUMNS` that
    divides `n`; 1 when `n` is unknown while tracing.
    """

    def __init__(self, rows):
        self.channels = rows.shape[-1]
        num_rows = rows.shape[0]
        self.factor = 1
        while (
            num_rows is not None
            and 2 * self.factor * self.channels <= _WIDE_COLUMNS
            and num_rows % (2 * self.factor) == 0
        ):
            self.factor *= 2
        self.rows = self.view(rows)

    def view(self, rows):
        """`rows` (shaped like the wrapped ones) in the wide view."""
        if self.factor == 1:
            return rows
        return ops.reshape(rows, [-1, self.factor * self.channels])

    def tile(self, vector):
        """A per-channel `[C]` vector repeated to a wide row."""
        return vector if self.factor == 1 else ops.tile(vector, [self.factor])

    def channel_sums(self, wide_rows):
        """Exact `[C]` sums of wide rows over the original rows."""
        sums = _exact_sum(wide_rows)
        if self.factor == 1:
            return sums
        return ops.sum(ops.reshape(sums, [self.factor, self.channels]), axis=0)


def _normalize_exact(
    rows, mean, variance, count, scale, offset, epsilon: float, total=None
):
    """Training-mode batch norm of `[n, C]` float32 rows with given batch statistics.

    `mean`, `variance` and `count` must be the statistics of `rows` (from
    `batch_moments`, with the same `total`); the gradient is written out (it
    accounts for their dependence on `rows`) so that its two column sums are
    `_exact_sum`s too, all-reduced by `total` for a synchronized batch norm.
    """
    inverse = ops.rsqrt(variance + epsilon)
    total = total or _identity

    @ops.custom_gradient
    def normalize(rows, scale, offset):
        normalized = (rows - mean) * inverse

        def grad(upstream):
            offset_grad = _exact_sum(upstream)
            scale_grad = _exact_sum(upstream * normalized)
            rows_grad = (scale * inverse) * (
                upstream
                - total(offset_grad) / count
                - normalized * (total(scale_grad) / count)
            )
            # Variables get this replica's share; the optimizer sums replicas.
            return rows_grad, scale_grad, offset_grad

        return normalized * scale + offset, grad

    return normalize(rows, scale, offset)


def _affine_terms(upstream_rows, centered, upstream_scale, constant, centered_scale):
    """`upstream_rows * upstream_scale + centered * centered_scale + constant`."""
    return upstream_rows * upstream_scale + centered * centered_scale + constant


def _normalize_tensorflow(rows, mean, variance, scale, offset, epsilon: float):
    """`_normalize_exact` (one replica) with TensorFlow's fused forward kernel.

    The statistics are given, so the forward pass is one inference-mode
    `FusedBatchNormV3`. The gradient's two column sums (scale and offset
    gradients) are `_exact_sum`s, and the input gradient is one XLA
    element-wise pass built from them: TensorFlow's `FusedBatchNormGradV3`,
    which recomputes both sums as float32 running sums, took 1.4-3.7x as
    long on a 2-core AVX2 CPU (45 against 12 ms on the STSS extraction's
    `[1.27 M, 4]` rows) and 8 % of a ResNet-50 training step
    (benchmarks/README.md).
    """
    import tensorflow as tf

    maps = tf.reshape(rows, [-1, 1, 1, rows.shape[-1]])

    @tf.custom_gradient
    def normalize(maps, scale, offset):
        outputs = tf.compat.v1.nn.fused_batch_norm(
            maps, scale, offset, mean=mean, variance=variance,
            epsilon=epsilon, is_training=False,
        )[0]

        def grad(upstream):
            # Exact column sums (a fused kernel's running sums are 1e-5
            # relative off at 2 M rows).
            wide = _WideRows(rows)
            upstream_rows = wide.view(tf.reshape(upstream, tf.shape(rows)))
            offset_grad = wide.channel_sums(upstream_rows)
            centered = wide.rows - wide.tile(mean)
            inverse = tf.math.rsqrt(variance + epsilon)
            scale_grad = wide.channel_sums(upstream_rows * centered) * inverse
            # The input gradient from those sums in one element-wise pass (an
            # inner XLA function: training graphs only).
            count = tf.cast(tf.shape(rows)[0], tf.float32)
            rows_grad = _backend.xla_compiled(_affine_terms)(
                upstream_rows,
                centered,
                wide.tile(scale * inverse),
                wide.tile(-scale * inverse * offset_grad / count),
                wide.tile(-scale * inverse * inverse * scale_grad / count),
            )
            return tf.reshape(rows_grad, tf.shape(maps)), scale_grad, offset_grad

        return outputs, grad

    return tf.reshape(normalize(maps, scale, offset), tf.shape(rows))


def _tensorflow_train_batch_norm(inputs, scale, offset, epsilon: float):
    """TensorFlow's own training-mode fused batch norm: `(outputs, mean, unbiased variance)`.

    One `FusedBatchNormV3(is_training=True)` op computes the statistics
    (float32 running sums: off by up to ~1e-3 relative when a channel has
    millions of elements and a mean far larger than its spread, see
    docs/architecture.md) and its registered gradient is one
    `FusedBatchNormGradV3`. Inputs of any rank >= 2 are viewed as 4-D;
    float16 and bfloat16 inputs are normalised with float32 statistics by
    the kernel itself.
    """
    import tensorflow as tf

    maps = _as_maps(inputs)
    # In training mode the kernel returns the unbiased (Bessel-corrected)
    # batch variance, the one the moving variance is updated with.
    outputs, mean, unbiased = tf.compat.v1.nn.fused_batch_norm(
        maps, scale, offset, epsilon=epsilon, is_training=True
    )
    if inputs.shape.rank != 4:
        outputs = tf.reshape(outputs, tf.shape(inputs))
    return outputs, mean, unbiased


def _train_batch_norm(rows, scale, offset, epsilon: float, total=None):
    """Training-mode batch norm of `[n, C]` float32 rows: `(outputs, mean, variance, count)`."""
    mean, variance, count = batch_moments(rows, total)
    if total is None and _backend.is_tensorflow():
        outputs = _normalize_tensorflow(rows, mean, variance, scale, offset, epsilon)
    else:
        outputs = _normalize_exact(rows, mean, variance, count, scale, offset, epsilon, total)
    return outputs, mean, variance, count


@keras.saving.register_keras_serializable(package="selfy")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Channels-last batch norm with exact batch statistics.

    Same variables, arguments and results as `keras.layers.BatchNormalization`
    with `axis=-1`. Training-mode statistics are computed from shifted,
    block-wise float32 sums (`batch_moments`), so output and gradient stay
    within about 1e-6 of float64 even with millions of elements per channel
    and a mean a hundred times the spread, where TensorFlow's fused kernel
    and `tf.nn.moments` are off by 1e-3 and more. As in PyTorch, the moving
    variance is updated with the unbiased batch variance (normalisation uses
    the biased one). Float16 / bfloat16 inputs are normalised with float32
    statistics. In training, on TensorFlow, TensorFlow's fused kernel
    normalises with these exact statistics and the input gradient is one
    element-wise pass from exact sums (without a `tf.distribute`
    all-reduce).

    With `training_statistics="tensorflow"` a training-mode call on
    TensorFlow is instead one `FusedBatchNormV3(is_training=True)` op, which
    computes the statistics itself with float32 running sums: faster, but
    off by up to ~1e-3 on the STSS extraction's activations, and with
    oneDNN (TensorFlow's default on x86 CPUs) its gradients lose precision
    in the ResNet backbone too (docs/architecture.md has the measurements;
    the models use exact statistics by default). The exact path is kept where that kernel cannot
    run: on other backends, and for a synchronized batch norm with more
    than one replica. At inference, on TensorFlow, each call is one
    `FusedBatchNormV3` op, which the CPU graph optimiser fuses with the
    convolution before it; on other backends it is the same affine map in
    `keras.ops`.

    With `synchronized=True` training-mode statistics are computed over the
    whole global batch, as `keras.layers.BatchNormalization(synchronized=True)`
    does. On TensorFlow each replica sums its inputs and its element count,
    then its squared deviations from the global mean; both are all-reduced
    across the replicas of the current `tf.distribute` strategy, and so are
    the two sums of the gradient. On JAX, a batch sharded by
    `keras.distribution.DataParallel` is one global array, so the statistics
    are those of the global batch anyway. Unlike Keras's layer, the moving
    variance is still updated with the unbiased variance of the global batch,
    so results do not depend on `synchronized`. Without a strategy (one
    replica) the statistics are those of the local batch. Inference never
    synchronizes.

    Args:
        training_statistics: str, default "exact", who computes training-mode
            batch statistics: "exact" (shifted block sums, every backend) or
            "tensorflow" (TensorFlow's fused training kernel; exact sums
            elsewhere, see above). Inference is the same either way.
        **kwargs: arguments of `keras.layers.BatchNormalization`; `axis` must
            be -1 and `renorm` is not supported.

    Example:

    >>> layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> tuple(layer(keras.ops.ones((2, 3, 3, 4))).shape)
    (2, 3, 3, 4)
    """

    def __init__(self, training_statistics: str = "exact", **kwargs):
        # Keras's layer accepts `synchronized=True` on TensorFlow only.
        synchronized = kwargs.pop("synchronized", False)
        super().__init__(**kwargs)
        self.synchronized = synchronized
        self.training_statistics = check_training_statistics(
            "training_statistics", training_statistics
        )
        if self.axis != -1 or self.renorm:
            raise ValueError(
                "`FusedBatchNormalization` supports only axis=-1 without renorm. "
                f"Received: axis={self.axis}, renorm={self.renorm}."
            )

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError("`FusedBatchNormalization` does not support masks.")
        channels = inputs.shape[-1]
        scale = ops.cast(self.gamma, "float32") if self.scale else ops.ones([channels])
        offset = ops.cast(self.beta, "float32") if self.center else ops.zeros([channels])
        if not (training and self.trainable):
            if _backend.is_tensorflow():
                return _fused_inference(self, inputs, scale, offset)
            scale, bias = folded_batch_norm(self)
            return ops.cast(ops.cast(inputs, "float32") * scale + bias, self.compute_dtype)
        total = None
        if self.synchronized and _backend.is_tensorflow():
            total = _replica_sum()
        if (
            self.training_statistics == "tensorflow"
            and total is None
            and _backend.is_tensorflow()
        ):
            outputs, mean, unbiased = _tensorflow_train_batch_norm(
                inputs, scale, offset, self.epsilon
            )
            self._update_moving_statistics(mean, unbiased)
            return ops.cast(outputs, self.compute_dtype)
        rows = ops.reshape(ops.cast(inputs, "float32"), [-1, channels])
        outputs, mean, variance, count = _train_batch_norm(
            rows, scale, offset, self.epsilon, total
        )
        unbiased = variance * (count / ops.maximum(count - 1.0, 1.0))
        self._update_moving_statistics(mean, unbiased)
        outputs = ops.reshape(outputs, ops.shape(inputs))
        return ops.cast(outputs, self.compute_dtype)

    def _update_moving_statistics(self, mean, unbiased):
        self.moving_mean.assign(
            self.moving_mean * self.momentum + mean * (1.0 - self.momentum)
        )
        self.moving_variance.assign(
            self.moving_variance * self.momentum + unbiased * (1.0 - self.momentum)
        )

    def get_config(self):
        config = super().get_config()
        config["training_statistics"] = self.training_statistics
        return config


def _fused_inference(layer: keras.layers.BatchNormalization, inputs, scale, offset):
    """Inference-mode batch norm as one TensorFlow `FusedBatchNormV3` op.

    Inputs of any rank >= 2 are viewed as 4-D.
    """
    import tensorflow as tf

    rank = inputs.shape.rank
    maps = _as_maps(inputs)
    outputs = tf.compat.v1.nn.fused_batch_norm(
        maps,
        scale,
        offset,
        mean=tf.cast(layer.moving_mean, tf.float32),
        variance=tf.cast(layer.moving_variance, tf.float32),
        epsilon=layer.epsilon,
        is_training=False,
    )[0]
    if rank != 4:
        outputs = tf.reshape(outputs, tf.shape(inputs))
    return tf.cast(outputs, layer.compute_dtype)


def _as_maps(inputs):
    """A TensorFlow tensor of rank >= 2 as the 4-D input of the fused kernels.

    Channels last; other ranks become `[-1, 1, 1, channels]`, and dtypes the
    kernels do not take become float32.
    """
    import tensorflow as tf

    maps = inputs
    if inputs.shape.rank != 4:
        maps = tf.reshape(inputs, [-1, 1, 1, inputs.shape[-1]])
    if maps.dtype not in (tf.float16, tf.bfloat16, tf.float32):
        maps = tf.cast(maps, tf.float32)
    return maps


def _replica_sum():
    """`sum(tensor)` across the replicas of the current `tf.distribute` strategy.

    None without a strategy or with one replica.
    """
    import tensorflow as tf

    replica_context = tf.distribute.get_replica_context()
    if replica_context is None or replica_context.num_replicas_in_sync <= 1:
        return None

    def total(tensor):
        return replica_context.all_reduce(tf.distribute.ReduceOp.SUM, tensor)

    return total


def make_batch_norm(
    name: str,
    dtype: object,
    momentum: float,
    epsilon: float,
    gamma_initializer: str = "ones",
    synchronized: bool = False,
    training_statistics: str = "exact",
) -> keras.layers.BatchNormalization:
    """A channels-last batch norm with PyTorch-equivalent settings.

    `synchronized=True` computes training statistics over the global batch;
    `training_statistics` chooses exact statistics or TensorFlow's fused
    training kernel (see `FusedBatchNormalization`).
    """
    return FusedBatchNormalization(
        training_statistics=training_statistics,
        axis=-1,
        momentum=momentum,
        epsilon=epsilon,
        gamma_initializer=gamma_initializer,
        synchronized=synchronized,
        name=name,
        dtype=dtype,
    )
