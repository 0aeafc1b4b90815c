"""Spatio-temporal self-similarity (STSS), the relational volume of SELFY.

Definition (DESIGN.md §2): with `g = f / sqrt(sum_c f**2 + 1e-6)`,

    out[b, t, y, x, l, u, v] =
        sum_c g[b, t, y, x, c] * g[b, t + l - L//2, y + u - U//2, x + v - V//2, c]

and 0 where the displaced position leaves the clip or the map. The causal
STSS (`causal=True`, for streaming) compares frame `t` with frames
`t - (L-1) ... t` instead: the temporal term is `t + l - (L - 1)`.

Three backends compute the same numbers:

- `"matmul"` (default): similarities of every query with a band of keys by
  batched matrix products, then one fixed gather of the `(L, U, V)` window.
  The pair `(t, t + d)` is computed once for `d >= 0`; the negative temporal
  offsets are read from the transposed entries. Queries are grouped in spatial
  tiles so that each tile only meets the keys its window can reach. All index
  tables are static NumPy arrays, planned once per shape
  (`selfy_tf.ops._stss_plan`), so the op is made of
  gathers, batched matrix products, reshapes and products only (on TensorFlow
  Gather, BatchMatMul, Reshape, Concat, Mul, ...: TFLite builtins). The gradient of the fixed gather is itself
  a gather, since every similarity is read at most twice.
- `"shift"`: one zero-padded shift and channel sum per displacement. Simple,
  slow; the readable reference.
- `"patches"`: `tf.image.extract_patches` of the keys, one temporal offset at
  a time. `ExtractImagePatches` is not a TFLite builtin, so this backend does
  not convert to TFLite; it exists on the TensorFlow backend only.

The op is written in `keras.ops` and runs on TensorFlow and JAX; its custom
gradients use `keras.ops.custom_gradient`.

On TensorFlow, with `jit=True` the fixed gathers of the `"matmul"` backend (forward and
backward) run as an XLA-compiled inner `tf.function`; the matrix products stay
TensorFlow kernels, which are faster than XLA's on CPU. An inner
`tf.function(jit_compile=True)` is saved into SavedModels as `_XlaMustCompile`,
so it is a runtime choice, off unless turned on: `stss_xla(True)` (a context
manager) or `set_stss_xla(True)` turns it on for the ops traced meanwhile
(the trainer does so for training); export and TFLite conversion leave it
off. An explicit `jit=` of `stss` overrides it.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
from keras import ops

from selfy_tf.ops import _backend
from selfy_tf.ops._stss_plan import MatmulPlan, choose_tiles, matmul_plan

STSS_BACKENDS = ("matmul", "shift", "patches")
# The backend of `stss` and of the layers and models that call it.
DEFAULT_BACKEND = "matmul"
DEFAULT_WINDOW = (5, 9, 9)
_EPSILON = 1e-6


def _validate_window(window: Sequence[int]) -> tuple[int, int, int]:
    message = (
        "`window` must be three odd positive integers (L, U, V). "
        f"Received: window={window!r}. Try window={DEFAULT_WINDOW}."
    )
    try:
        sizes = tuple(window)
    except TypeError:
        raise ValueError(message) from None
    if len(sizes) != 3:
        raise ValueError(message)
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ValueError(message)
        if size <= 0 or size % 2 == 0:
            raise ValueError(message)
    return tuple(int(size) for size in sizes)


def _validate_features(features):
    features = ops.convert_to_tensor(features)
    if len(features.shape) != 5:
        raise ValueError(
            "`features` must have rank 5, [batch, num_frames, height, width, "
            f"channels]. Received: features.shape={tuple(features.shape)}."
        )
    dtype = keras.backend.standardize_dtype(features.dtype)
    if "float" not in dtype:
        raise ValueError(
            "`features` must be a floating-point tensor (float16, bfloat16, "
            f"float32 or float64). Received: features.dtype={dtype}. "
            "Cast it first, e.g. keras.ops.cast(features, 'float32')."
        )
    static_dims = features.shape[1:]
    if any(size is None for size in static_dims):
        raise ValueError(
            "`features` needs static num_frames, height, width and channels "
            "(only the batch dimension may be None). Received: "
            f"features.shape={tuple(features.shape)}."
        )
    return features


def _normalize(features):
    # Upcast before the sum of squares: float16 overflows (and bfloat16 loses
    # most digits) for feature norms that are ordinary after a ReLU.
    features = ops.cast(features, "float32")
    # Normalise a 2-D view: the TFLite converter fuses this into
    # L2_NORMALIZATION, whose kernels (int8 calibration included) accept at
    # most 4-D inputs.
    rows = ops.reshape(features, [-1, features.shape[-1]])
    rows = rows * ops.rsqrt(ops.sum(ops.square(rows), axis=-1, keepdims=True) + _EPSILON)
    return ops.reshape(rows, [-1, *features.shape[1:]])


# ---------------------------------------------------------------------------
# "matmul" backend


def _masked_gather(params, index: np.ndarray, mask: np.ndarray, axis: int):
    return _backend.take(params, index, axis=axis) * mask


def _band_gather_fn(plan: MatmulPlan, jit: bool) -> Callable:
    """The fixed gather from frame-pair similarities to the STSS window.

    It takes one `[batch, num_frames - d, num_tiles, tile_queries, tile_keys]`
    tensor per temporal offset `d = 0..max_offset` and returns
    `[batch, num_frames * height * width * L * U * V]`.
    """
    sizes = [
        (plan.num_frames - offset) * plan.num_tiles * plan.tile_queries * plan.tile_keys
        for offset in range(plan.max_offset + 1)
    ]
    split_points = np.cumsum(sizes)[:-1].tolist()

    def forward(*similarities):
        rows = ops.concatenate(
            [ops.reshape(part, [-1, size]) for part, size in zip(similarities, sizes)],
            axis=1,
        )
        return _masked_gather(rows, plan.band_index, plan.band_mask, axis=1)

    def backward(upstream):
        gradient = _masked_gather(
            upstream, plan.first_reader, plan.first_mask, axis=1
        )
        if plan.second_reader is not None:
            gradient += _masked_gather(
                upstream, plan.second_reader, plan.second_mask, axis=1
            )
        parts = ops.split(gradient, split_points, axis=1) if split_points else [gradient]
        return tuple(
            ops.reshape(
                part,
                [
                    -1,
                    plan.num_frames - offset,
                    plan.num_tiles,
                    plan.tile_queries,
                    plan.tile_keys,
                ],
            )
            for offset, part in enumerate(parts)
        )

    if jit:
        # TensorFlow's CPU Gather kernel is several times slower than XLA's
        # on the band gather.
        forward, backward = _backend.xla_compiled(forward), _backend.xla_compiled(backward)

    @ops.custom_gradient
    def band_gather(*similarities):
        def grad(*upstream):
            gradients = backward(upstream[0])
            return gradients if len(gradients) > 1 else gradients[0]

        return forward(*similarities), grad

    return band_gather


def _flat_upstream(upstream: tuple) -> tuple:
    """The upstream gradients of a function with several outputs, one per output.

    TensorFlow passes them as separate arguments, JAX as one tuple or list
    shaped like the outputs.
    """
    if len(upstream) == 1 and isinstance(upstream[0], (list, tuple)):
        return tuple(upstream[0])
    return tuple(upstream)


def _frame_padding(before: int, after: int) -> list[list[int]]:
    return [[0, 0], [before, after], [0, 0], [0, 0], [0, 0]]


def _pair_similarities(queries, keys, max_offset: int) -> list:
    """Similarities of frame t's queries with frame t + d's keys, d = 0..max.

    Args:
        queries: `[batch, num_frames, num_tiles, tile_queries, channels]`.
        keys: `[batch, num_frames, num_tiles, tile_keys, channels]`.
        max_offset: largest temporal offset, below `num_frames`.

    Returns:
        One `[batch, num_frames - d, num_tiles, tile_queries, tile_keys]`
        tensor per offset `d`.
    """
    num_frames = queries.shape[1]

    # The gradient is written out because TensorFlow's gradient of the frame
    # slices (StridedSliceGrad) is far slower on CPU than padding.
    @ops.custom_gradient
    def similarities(queries, keys):
        outputs = [
            _backend.matmul(
                queries[:, : num_frames - offset], keys[:, offset:], transpose_b=True
            )
            for offset in range(max_offset + 1)
        ]

        def grad(*upstream):
            query_grad = key_grad = None
            for offset, part in enumerate(_flat_upstream(upstream)):
                query_part = _backend.matmul(part, keys[:, offset:])
                key_part = _backend.matmul(
                    part, queries[:, : num_frames - offset], transpose_a=True
                )
                if offset:
                    # Back to num_frames frames: queries lose the last
                    # `offset` frames, keys the first.
                    query_part = ops.pad(query_part, _frame_padding(0, offset))
                    key_part = ops.pad(key_part, _frame_padding(offset, 0))
                query_grad = query_part if query_grad is None else query_grad + query_part
                key_grad = key_part if key_grad is None else key_grad + key_part
            return query_grad, key_grad

        return outputs, grad

    return similarities(queries, keys)


def _tile_rows(frames, plan: MatmulPlan) -> tuple:
    """Query and key tiles of `[batch, num_frames, H*W, channels]` frames.

    Their gradients are gathers too: a query is read from its owning tile
    only, and a key position sums the slots of the tiles that hold it.
    """

    @ops.custom_gradient
    def tiles(frames):
        queries = _backend.take(frames, plan.query_positions, axis=2)
        keys = _backend.take(frames, plan.key_positions, axis=2)

        def grad(*upstream):
            query_upstream, key_upstream = _flat_upstream(upstream)
            gradient = _backend.take(query_upstream, plan.query_owner, axis=2)
            for reader, mask in zip(plan.key_readers, plan.key_reader_mask):
                gradient += _masked_gather(key_upstream, reader, mask, axis=2)
            return gradient

        return (queries, keys), grad

    return tiles(frames)


@functools.lru_cache(maxsize=64)
def _cached_band_gather(
    num_frames: int,
    height: int,
    width: int,
    window: tuple[int, int, int],
    tile: tuple[int, int],
    jit: bool,
) -> Callable:
    plan = matmul_plan(num_frames, height, width, window, tile)
    return _band_gather_fn(plan, jit)


def _stss_matmul(
    normalized,
    shape: tuple[int, int, int, int],
    window: tuple[int, int, int],
    jit: bool,
):
    num_frames, height, width, channels = shape
    tile = choose_tiles(height, width, window[1], window[2])
    plan = matmul_plan(num_frames, height, width, window, tile)
    frames = ops.reshape(normalized, [-1, num_frames, height * width, channels])
    if plan.query_positions is None:
        queries = keys = frames
    else:
        queries, keys = _tile_rows(frames, plan)
    queries = ops.reshape(
        queries, [-1, num_frames, plan.num_tiles, plan.tile_queries, channels]
    )
    keys = ops.reshape(keys, [-1, num_frames, plan.num_tiles, plan.tile_keys, channels])
    similarities = _pair_similarities(queries, keys, plan.max_offset)
    band_gather = _cached_band_gather(num_frames, height, width, window, tile, jit)
    band = band_gather(*similarities)
    return ops.reshape(band, [-1, num_frames, height, width, *window])


# ---------------------------------------------------------------------------
# "shift" and "patches" backends


def _pad_keys(normalized, window: tuple[int, int, int], causal: bool = False):
    half_l, half_u, half_v = (size // 2 for size in window)
    # The causal window reaches L - 1 frames back and none ahead.
    before, after = (2 * half_l, 0) if causal else (half_l, half_l)
    return ops.pad(
        normalized,
        [[0, 0], [before, after], [half_u, half_u], [half_v, half_v], [0, 0]],
    )


def _stss_shift(normalized, window: tuple[int, int, int], causal: bool = False):
    length, height_window, width_window = window
    _, num_frames, height, width, _ = normalized.shape
    padded = _pad_keys(normalized, window, causal)
    outputs = []
    for l in range(length):
        for u in range(height_window):
            for v in range(width_window):
                shifted = padded[:, l : l + num_frames, u : u + height, v : v + width]
                outputs.append(ops.sum(normalized * shifted, axis=-1))
    stacked = ops.stack(outputs, axis=-1)
    return ops.reshape(stacked, [-1, num_frames, height, width, *window])


def _stss_patches(normalized, window: tuple[int, int, int], causal: bool = False):
    import tensorflow as tf

    length, height_window, width_window = window
    _, num_frames, height, width, channels = normalized.shape
    padded = _pad_keys(normalized, window, causal)
    padded_height = height + height_window - 1
    padded_width = width + width_window - 1
    queries = tf.reshape(normalized, [-1, height, width, 1, channels])
    outputs = []
    for l in range(length):
        frames = tf.reshape(
            padded[:, l : l + num_frames], [-1, padded_height, padded_width, channels]
        )
        patches = tf.image.extract_patches(
            frames,
            sizes=[1, height_window, width_window, 1],
            strides=[1, 1, 1, 1],
            rates=[1, 1, 1, 1],
            padding="VALID",
        )  # [batch * num_frames, height, width, U * V * channels], (u, v, c)
        patches = tf.reshape(
            patches, [-1, height, width, height_window * width_window, channels]
        )
        outputs.append(tf.reduce_sum(queries * patches, axis=-1))
    stacked = tf.stack(outputs, axis=-2)  # [batch * num_frames, H, W, L, U * V]
    return tf.reshape(stacked, [-1, num_frames, height, width, *window])


# ---------------------------------------------------------------------------
# Public op


@functools.lru_cache(maxsize=64)
def _compiled(backend: str, window: tuple[int, int, int], causal: bool) -> Callable:
    import tensorflow as tf

    function = _BACKEND_FUNCTIONS[backend]
    return tf.function(
        lambda normalized: function(normalized, window, causal),
        jit_compile=True,
        autograph=False,
    )


_BACKEND_FUNCTIONS = {"shift": _stss_shift, "patches": _stss_patches}

# Process-wide, not per thread: the replicas of a distribution strategy
# trace the op in threads of their own.
_stss_xla_enabled = False


def stss_xla_enabled() -> bool:
    """Whether `stss` calls without `jit=` compile with XLA (see `stss_xla`)."""
    return _stss_xla_enabled


def set_stss_xla(enabled: bool) -> None:
    """Turns the XLA compilation of the STSS op on or off (see `stss_xla`)."""
    global _stss_xla_enabled
    if not isinstance(enabled, bool):
        raise ValueError(f"`enabled` must be True or False. Received: enabled={enabled!r}.")
    _stss_xla_enabled = enabled


@contextlib.contextmanager
def stss_xla(enabled: bool = True) -> Iterator[None]:
    """Compiles the STSS op with XLA (on TensorFlow) while the context is open.

    The choice is read when the op is traced or run: functions traced inside
    the context (e.g. Keras's train step, on the first `fit` call) keep it.
    Off by default, because the inner XLA function would be saved into
    SavedModels, which TF Serving and LiteRT run without XLA; turn it on
    for training, where it makes the op's gathers faster
    (benchmarks/README.md). Other Keras backends compile whole functions and
    ignore it. Restores the previous setting on exit.

    >>> from selfy_tf.ops import stss_xla, stss_xla_enabled
    >>> with stss_xla(True):
    ...     stss_xla_enabled()
    True
    """
    previous = stss_xla_enabled()
    set_stss_xla(enabled)
    try:
        yield
    finally:
        set_stss_xla(previous)


def stss(
    features: Any,
    window: Sequence[int] = DEFAULT_WINDOW,
    backend: str = DEFAULT_BACKEND,
    jit: bool | None = None,
    causal: bool = False,
) -> Any:
    """Computes the spatio-temporal self-similarity of a feature volume.

    Each feature vector is L2-normalised over channels (epsilon 1e-6 added to
    the sum of squares), then compared by dot product with the vectors in an
    `(L, U, V)` window around it in time and space. Displaced positions that
    fall outside the clip or the map give 0 (zero padding). With `causal`,
    the temporal window looks back only: frame `t` meets frames
    `t - (L - 1) ... t` (offsets `-(L - 1) ... 0`), so that no output
    depends on a later frame.

    Args:
        features: `[batch, num_frames, height, width, channels]` floating
            tensor (float16, bfloat16, float32, float64). The batch dimension
            may be dynamic (`None`); the others must be static. Half-precision
            inputs are upcast: the op accumulates and returns float32.
        window: `(L, U, V)`, three odd positive sizes of the temporal,
            vertical and horizontal window. Defaults to `(5, 9, 9)`. Windows
            larger than the clip or the map are allowed (the excess is 0).
        backend: `"matmul"` (default; fastest on CPU, converts to TFLite
            builtins), `"shift"` (one shift per displacement; reference) or
            `"patches"` (`tf.image.extract_patches`; not TFLite-convertible;
            TensorFlow backend only). All give the same numbers.
        jit: on TensorFlow, compile the op's memory-bound part with XLA (an
            inner `tf.function(jit_compile=True)`), the fastest choice on
            CPU. Defaults to None: the runtime setting (`stss_xla`, off
            unless turned on). Ignored on other backends, which compile
            whole functions. Graphs that are exported to TF Serving or
            converted to TFLite must not require XLA. When the caller
            already compiles with XLA, the flag changes nothing.
        causal: bool, default False. When True, index `l` of the window is
            the temporal offset `l - (L - 1)` instead of `l - L//2`.

    Returns:
        `[batch, num_frames, height, width, L, U, V]` float32 tensor of cosine
        similarities; index `(L//2, U//2, V//2)` is the position itself
        (`(L - 1, U//2, V//2)` when `causal`).

    Raises:
        ValueError: if `features` is not rank 5 with static non-batch
            dimensions or not floating point, if `window` is not three odd
            positive integers, if `backend` is unknown, or if it is
            `"patches"` on a backend other than TensorFlow.

    Example:

    >>> import numpy as np
    >>> from selfy_tf.ops import stss
    >>> features = np.random.normal(size=(2, 4, 6, 6, 8)).astype("float32")
    >>> tuple(stss(features, window=(3, 5, 5)).shape)
    (2, 4, 6, 6, 3, 5, 5)
    """
    window = _validate_window(window)
    if backend not in STSS_BACKENDS:
        raise ValueError(
            f"`backend` must be one of {STSS_BACKENDS}. Received: backend={backend!r}."
        )
    features = _validate_features(features)
    shape = tuple(int(size) for size in features.shape[1:])
    if backend == "patches":
        _backend.require_tensorflow("The STSS backend 'patches' (tf.image.extract_patches)")
    normalized = _normalize(features)
    # XLA compilation of a part of the op is a TensorFlow option; other
    # backends compile whole functions (jax.jit) and ignore `jit`.
    if jit is None:
        jit = stss_xla_enabled()
    jit = bool(jit) and _backend.is_tensorflow()
    causal = bool(causal)
    if backend == "matmul":
        if not causal:
            return _stss_matmul(normalized, shape, window, jit)
        # The symmetric window of 2L - 1 frames holds offsets -(L-1) ... L-1;
        # its first L are the causal ones. The frame pairs computed are the
        # same (offsets up to L - 1); only the fixed gather is wider.
        length, height_window, width_window = window
        wide = _stss_matmul(normalized, shape, (2 * length - 1, height_window, width_window), jit)
        # A 3-D slice: TFLite's StridedSlice takes at most 5 dimensions.
        wide = ops.reshape(wide, [-1, 2 * length - 1, height_window * width_window])
        return ops.reshape(wide[:, :length], [-1, *shape[:3], *window])
    if jit:
        return _compiled(backend, window, causal)(normalized)
    return _BACKEND_FUNCTIONS[backend](normalized, window, causal)


def stss_last_frame(history: Any, window: Sequence[int] = DEFAULT_WINDOW) -> Any:
    """The causal STSS of the last frame of a short clip (one streaming step).

    Equals `stss(history, window, causal=True)[:, -1:]` when `history` holds
    the `L` most recent frames (zeros standing for frames before the start of
    the stream), at `1 / L` of its cost: only the last frame's queries are
    compared, with all `L` frames' keys, by one matrix product and a fixed
    gather (TFLite builtins). Its memory grows as `(height * width)**2 * L`,
    fine for the 14 x 14 grid of a 224 x 224 model (0.2 M similarities).

    Args:
        history: `[batch, L, height, width, channels]` floating tensor, the
            STSS input features of frames `t - (L - 1) ... t`, oldest first.
        window: `(L, U, V)`, three odd positive sizes; `L` must equal the
            frames of `history`.

    Returns:
        `[batch, 1, height, width, L, U, V]` float32 tensor.

    Raises:
        ValueError: if `history` is not rank 5 with static non-batch
            dimensions, or its frames differ from `L`.
    """
    window = _validate_window(window)
    history = _validate_features(history)
    length, height_window, width_window = window
    frames, height, width, channels = (int(size) for size in history.shape[1:])
    if frames != length:
        raise ValueError(
            f"`history` must hold L={length} frames for window={window}. Received: "
            f"history.shape={tuple(history.shape)}."
        )
    normalized = _normalize(history)
    positions = height * width
    queries = ops.reshape(normalized[:, -1], [-1, positions, channels])
    keys = ops.reshape(normalized, [-1, length * positions, channels])
    # [batch, positions, L * positions]: query q against key (l, p).
    similarities = _backend.matmul(queries, keys, transpose_b=True)
    index, mask = _last_frame_gather(height, width, window)
    rows = ops.reshape(similarities, [-1, positions * length * positions])
    band = _masked_gather(rows, index, mask, axis=1)
    return ops.reshape(band, [-1, 1, height, width, *window])


@functools.lru_cache(maxsize=16)
def _last_frame_gather(
    height: int, width: int, window: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into `[positions, L * positions]` similarities, and their mask.

    Ordered `(y, x, l, u, v)`; out-of-map displacements read index 0 and are
    masked to 0.
    """
    length, height_window, width_window = window
    positions = height * width
    y, x, l, u, v = np.meshgrid(
        np.arange(height), np.arange(width), np.arange(length),
        np.arange(height_window), np.arange(width_window), indexing="ij",
    )
    key_y = y + u - height_window // 2
    key_x = x + v - width_window // 2
    inside = (key_y >= 0) & (key_y < height) & (key_x >= 0) & (key_x < width)
    query = y * width + x
    key = l * positions + np.clip(key_y, 0, height - 1) * width + np.clip(key_x, 0, width - 1)
    index = np.where(inside, query * (length * positions) + key, 0).reshape(-1)
    mask = inside.reshape(1, -1).astype("float32")
    return index.astype(np.int64), mask
