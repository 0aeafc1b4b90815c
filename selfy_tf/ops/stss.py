"""Spatio-temporal self-similarity (STSS), the relational volume of SELFY.

Definition (DESIGN.md §2): with `g = f / sqrt(sum_c f**2 + 1e-6)`,

    out[b, t, y, x, l, u, v] =
        sum_c g[b, t, y, x, c] * g[b, t + l - L//2, y + u - U//2, x + v - V//2, c]

and 0 where the displaced position leaves the clip or the map.

Three backends compute the same numbers:

- `"matmul"` (default): similarities of every query with a band of keys by
  batched matrix products, then one fixed gather of the `(L, U, V)` window.
  The pair `(t, t + d)` is computed once for `d >= 0`; the negative temporal
  offsets are read from the transposed entries. Queries are grouped in spatial
  tiles so that each tile only meets the keys its window can reach. All index
  tables are static NumPy arrays, built once per shape, so the op is made of
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
import logging
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import keras
import numpy as np
from keras import ops

from selfy_tf.ops import _backend

logger = logging.getLogger(__name__)

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


class _MatmulPlan(NamedTuple):
    """Static index tables of the "matmul" backend for one shape and window.

    Gathers never read a "zero slot": an index whose value must be 0 points at
    element 0 and a 0/1 mask of the same shape multiplies the result.
    """

    num_frames: int
    max_offset: int  # frame pairs (t, t + d) exist for 0 <= d <= max_offset
    num_tiles: int
    tile_queries: int
    tile_keys: int
    num_similarities: int  # per batch element: pairs * tiles * queries * keys
    # Spatial tiles; None where the tile is the whole map.
    query_positions: np.ndarray | None  # [num_tiles * tile_queries] of [H*W]
    query_owner: np.ndarray | None  # [H*W] slot of each query's owning tile
    key_positions: np.ndarray | None  # [num_tiles * tile_keys] of [H*W]
    key_readers: np.ndarray | None  # [readers, H*W] key slots of each position
    key_reader_mask: np.ndarray | None  # [readers, H*W, 1]
    # Output <- similarities.
    band_index: np.ndarray  # [T*H*W*L*U*V]
    band_mask: np.ndarray  # [T*H*W*L*U*V]
    # Similarities <- output gradient: each similarity is read at most twice.
    first_reader: np.ndarray  # [num_similarities]
    first_mask: np.ndarray
    second_reader: np.ndarray | None  # [num_similarities]; None if never read
    second_mask: np.ndarray | None


_MIN_TILE_QUERIES = 32


def _tile_cost(size: int, window_size: int, tile: int) -> int:
    starts, _, keys = _tile_starts(size, window_size, tile)
    return len(starts) * tile * keys


def _choose_tiles(
    height: int, width: int, height_window: int, width_window: int
) -> tuple[int, int]:
    """Chooses the spatial query tile that minimises multiply-adds.

    A tile of `tile_height x tile_width` queries meets
    `min(height, tile_height + U - 1) x min(width, tile_width + V - 1)` keys.
    Very small tiles make many tiny matrix products that run far below peak
    speed, so tiles keep at least `_MIN_TILE_QUERIES` queries (or the whole
    map when it is smaller).
    """
    best = None
    for tile_height in range(1, height + 1):
        for tile_width in range(1, width + 1):
            if tile_height * tile_width < min(_MIN_TILE_QUERIES, height * width):
                continue
            cost = _tile_cost(height, height_window, tile_height) * _tile_cost(
                width, width_window, tile_width
            )
            # Prefer fewer, larger tiles when the cost is equal.
            key = (cost, -tile_height * tile_width)
            if best is None or key < best[0]:
                best = (key, tile_height, tile_width)
    return best[1], best[2]



def _tile_starts(size: int, window_size: int, tile: int) -> tuple[list, list, int]:
    num_tiles = -(-size // tile)
    # The last tile is moved back inside the map (it may overlap its
    # neighbour); each query is read from the tile that owns it.
    starts = [min(index * tile, size - tile) for index in range(num_tiles)]
    half = window_size // 2
    # One key extent for all tiles: the widest range that a tile's window
    # reaches inside the map; each tile's key range is shifted inside the map.
    keys = max(
        min(size, start + tile + half) - max(0, start - half) for start in starts
    )
    key_starts = [int(np.clip(start - half, 0, size - keys)) for start in starts]
    return starts, key_starts, keys


class _Tiling(NamedTuple):
    """Spatial query tiles and the key range that each tile meets.

    The tiles form a `len(starts_y) x len(starts_x)` grid, numbered row by
    row. Tile `(i, j)` holds the queries of rows `starts_y[i]` to
    `starts_y[i] + tile_height - 1` and columns `starts_x[j]` to
    `starts_x[j] + tile_width - 1`, and meets the `keys_y x keys_x` keys from
    `(key_starts_y[i], key_starts_x[j])`. Queries and keys are numbered row by
    row inside their tile.
    """

    tile_height: int
    tile_width: int
    keys_y: int
    keys_x: int
    starts_y: np.ndarray
    starts_x: np.ndarray
    key_starts_y: np.ndarray
    key_starts_x: np.ndarray

    @property
    def num_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    @property
    def tile_queries(self) -> int:
        return self.tile_height * self.tile_width

    @property
    def tile_keys(self) -> int:
        return self.keys_y * self.keys_x

    def tile_y_of(self, y: np.ndarray) -> np.ndarray:
        """Tile row that owns query row `y` (the earlier tile where two overlap)."""
        return np.minimum(y // self.tile_height, len(self.starts_y) - 1)

    def tile_x_of(self, x: np.ndarray) -> np.ndarray:
        """Tile column that owns query column `x`."""
        return np.minimum(x // self.tile_width, len(self.starts_x) - 1)

    def query_slot(
        self, tile_y: np.ndarray, tile_x: np.ndarray, y: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """Slot of query `(y, x)` in tile `(tile_y, tile_x)`, counted over all tiles."""
        tile = tile_y * len(self.starts_x) + tile_x
        local_y = y - self.starts_y[tile_y]
        local_x = x - self.starts_x[tile_x]
        return tile * self.tile_queries + local_y * self.tile_width + local_x

    def key_local(
        self, tile_y: np.ndarray, tile_x: np.ndarray, y: np.ndarray, x: np.ndarray
    ) -> np.ndarray:
        """Index of key `(y, x)` among the keys of tile `(tile_y, tile_x)`."""
        local_y = y - self.key_starts_y[tile_y]
        local_x = x - self.key_starts_x[tile_x]
        if (
            local_y.min(initial=0) < 0
            or local_y.max(initial=0) >= self.keys_y
            or local_x.min(initial=0) < 0
            or local_x.max(initial=0) >= self.keys_x
        ):
            raise AssertionError("STSS key tile does not cover the window.")
        return local_y * self.keys_x + local_x


class _Comparisons(NamedTuple):
    """The two positions that each non-zero output element compares.

    Output `(t, y, x, l, u, v)` compares `(t, y, x)` with
    `(t + d, y + u - U//2, x + v - V//2)`, `d = l - L//2`. Only pairs with
    `d >= 0` are computed, so for `d < 0` the roles swap: the query is the
    displaced position, in the earlier frame, and `offset` is `|d|`.
    """

    outputs: np.ndarray  # flat output index, row-major over [T, H, W, L, U, V]
    query_frame: np.ndarray
    offset: np.ndarray  # the key is in frame query_frame + offset
    query_y: np.ndarray
    query_x: np.ndarray
    key_y: np.ndarray
    key_x: np.ndarray


def _pair_table(num_frames: int, max_offset: int) -> np.ndarray:
    """Index of each frame pair `(t, t + d)` whose similarities are computed.

    Pairs exist for `0 <= d <= max_offset`; negative offsets read the pair
    `(t + d, t)` transposed. They are numbered offset by offset, then frame by
    frame, because `_pair_similarities` gives one tensor per offset and the
    band gather concatenates them in that order.

    Args:
        num_frames: frames of the clip.
        max_offset: largest temporal offset, below `num_frames`.

    Returns:
        `[num_frames, max_offset + 1]` int64 table of pair indices, -1 where
        `t + d` is past the clip.
    """
    pair_table = np.full((num_frames, max_offset + 1), -1, np.int64)
    num_pairs = 0
    for offset in range(max_offset + 1):
        for frame in range(num_frames - offset):
            pair_table[frame, offset] = num_pairs
            num_pairs += 1
    return pair_table


def _tiling(
    height: int, width: int, window: tuple[int, int, int], tile: tuple[int, int]
) -> _Tiling:
    """The query tiles of `tile = (tile_height, tile_width)` and their keys."""
    tile_height, tile_width = tile
    starts_y, key_starts_y, keys_y = _tile_starts(height, window[1], tile_height)
    starts_x, key_starts_x, keys_x = _tile_starts(width, window[2], tile_width)
    return _Tiling(
        tile_height=tile_height,
        tile_width=tile_width,
        keys_y=keys_y,
        keys_x=keys_x,
        starts_y=np.asarray(starts_y),
        starts_x=np.asarray(starts_x),
        key_starts_y=np.asarray(key_starts_y),
        key_starts_x=np.asarray(key_starts_x),
    )


def _block_positions(
    starts_y: np.ndarray, starts_x: np.ndarray, size_y: int, size_x: int, width: int
) -> np.ndarray:
    """Flat map positions `y * width + x` of `size_y x size_x` blocks.

    Returns:
        `[len(starts_y) * len(starts_x), size_y * size_x]`: one row per block,
        blocks and their positions both row by row.
    """
    block_y, block_x = np.meshgrid(
        np.arange(len(starts_y)), np.arange(len(starts_x)), indexing="ij"
    )
    local_y, local_x = np.meshgrid(np.arange(size_y), np.arange(size_x), indexing="ij")
    return (
        (starts_y[block_y.reshape(-1), None] + local_y.reshape(1, -1)) * width
        + starts_x[block_x.reshape(-1), None]
        + local_x.reshape(1, -1)
    )


def _tile_table(
    tiling: _Tiling, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gathers from a frame's `H*W` positions to its query and key tiles.

    Returns:
        `(query_positions, key_positions, query_owner)`: the map position of
        each query slot, `[num_tiles * tile_queries]`, and of each key slot,
        `[num_tiles * tile_keys]`; and the slot of the tile that owns each
        map position, `[H*W]`, from which the query gradient is read (tiles
        may overlap, and only the owner's similarities are used).
    """
    query_positions = _block_positions(
        tiling.starts_y, tiling.starts_x, tiling.tile_height, tiling.tile_width, width
    )
    key_positions = _block_positions(
        tiling.key_starts_y, tiling.key_starts_x, tiling.keys_y, tiling.keys_x, width
    )
    rows, columns = np.arange(height)[:, None], np.arange(width)[None, :]
    query_owner = tiling.query_slot(
        tiling.tile_y_of(rows), tiling.tile_x_of(columns), rows, columns
    )
    return (
        query_positions.reshape(-1),
        key_positions.reshape(-1),
        query_owner.reshape(-1),
    )


def _window_comparisons(
    num_frames: int, height: int, width: int, window: tuple[int, int, int]
) -> _Comparisons:
    """The positions compared by every output element that is not 0.

    An output element is 0 where its displaced position leaves the clip or
    the map; those are left out.
    """
    length, height_window, width_window = window
    frame, y, x, l, u, v = np.meshgrid(
        np.arange(num_frames),
        np.arange(height),
        np.arange(width),
        np.arange(length),
        np.arange(height_window),
        np.arange(width_window),
        indexing="ij",
        sparse=True,
    )
    offset = l - length // 2
    other_frame = frame + offset
    other_y = y + u - height_window // 2
    other_x = x + v - width_window // 2
    valid = (
        (other_frame >= 0)
        & (other_frame < num_frames)
        & (other_y >= 0)
        & (other_y < height)
        & (other_x >= 0)
        & (other_x < width)
    )
    forward = offset >= 0
    query_frame = np.where(forward, frame, other_frame)
    query_y = np.where(forward, y, other_y)
    query_x = np.where(forward, x, other_x)
    key_y = np.where(forward, other_y, y)
    key_x = np.where(forward, other_x, x)
    query_frame, query_y, query_x, key_y, key_x, offset, valid = np.broadcast_arrays(
        query_frame, query_y, query_x, key_y, key_x, np.abs(offset), valid
    )
    return _Comparisons(
        outputs=np.flatnonzero(valid.reshape(-1)),
        query_frame=query_frame[valid],
        offset=offset[valid],
        query_y=query_y[valid],
        query_x=query_x[valid],
        key_y=key_y[valid],
        key_x=key_x[valid],
    )


def _band_table(
    comparisons: _Comparisons,
    num_outputs: int,
    pair_table: np.ndarray,
    tiling: _Tiling,
) -> np.ndarray:
    """The similarity that each output element reads: the band gather.

    Similarities are laid out as `[pair, tile, tile_queries, tile_keys]`, the
    concatenated results of `_pair_similarities`.

    Returns:
        `[T*H*W*L*U*V]` int64 indices into the similarities, -1 where the
        output is 0.
    """
    pair = pair_table[comparisons.query_frame, comparisons.offset]
    tile_y = tiling.tile_y_of(comparisons.query_y)
    tile_x = tiling.tile_x_of(comparisons.query_x)
    query_slot = tiling.query_slot(
        tile_y, tile_x, comparisons.query_y, comparisons.query_x
    )
    key_local = tiling.key_local(tile_y, tile_x, comparisons.key_y, comparisons.key_x)
    similarity = (
        pair * (tiling.num_tiles * tiling.tile_queries) + query_slot
    ) * tiling.tile_keys + key_local
    band_index = np.full(num_outputs, -1, np.int64)
    band_index[comparisons.outputs] = similarity
    return band_index


def _band_reader_table(band_index: np.ndarray, num_similarities: int) -> np.ndarray:
    """The output elements that read each similarity: the gradient's gathers.

    A pair with `d > 0` is read once in each direction, a pair with `d = 0`
    once, so the gradient of the band gather is a sum of two gathers.

    Returns:
        `[2, num_similarities]` int64: the first and second output element
        (in increasing order) that reads each similarity, -1 where fewer do.

    Raises:
        AssertionError: if a similarity is read more than twice (a bug).
    """
    outputs = np.flatnonzero(band_index >= 0)
    similarity = band_index[outputs]
    order = np.argsort(similarity, kind="stable")
    sorted_similarity = similarity[order]
    sorted_outputs = outputs[order]
    first = np.ones(sorted_similarity.shape, bool)
    first[1:] = sorted_similarity[1:] != sorted_similarity[:-1]
    readers = np.full((2, num_similarities), -1, np.int64)
    readers[0, sorted_similarity[first]] = sorted_outputs[first]
    readers[1, sorted_similarity[~first]] = sorted_outputs[~first]
    if np.any(np.bincount(similarity, minlength=1) > 2):
        raise AssertionError("STSS similarity read more than twice.")
    return readers


def _key_reader_table(key_positions: np.ndarray, num_positions: int) -> np.ndarray:
    """The key slots that hold each map position: the key gradient's gathers.

    Neighbouring tiles' key ranges overlap, so a position's key gradient sums
    up to `readers` slots.

    Returns:
        `[readers, num_positions]` int64 key slots, in increasing order, -1
        where a position is held by fewer slots.
    """
    counts = np.bincount(key_positions, minlength=num_positions)
    order = np.argsort(key_positions, kind="stable")
    rank = np.arange(key_positions.size) - np.repeat(np.cumsum(counts) - counts, counts)
    key_readers = np.full((counts.max(), num_positions), -1, np.int64)
    key_readers[rank, key_positions[order]] = order
    return key_readers


def _index_and_mask(index: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """A gather index with no -1 (read element 0 instead) and its 0/1 mask."""
    return np.maximum(index, 0).astype(dtype), (index >= 0).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _matmul_plan(
    num_frames: int,
    height: int,
    width: int,
    window: tuple[int, int, int],
    tile: tuple[int, int],
) -> _MatmulPlan:
    """The index tables of the "matmul" backend for one shape, window and tile.

    Composed of the frame pairs (`_pair_table`), the query and key tiles
    (`_tile_table`), the similarity that each output reads (`_band_table`),
    the outputs that read each similarity (`_band_reader_table`) and the key
    slots of each position (`_key_reader_table`), with their indices cast to
    int32 where they fit. Built once per shape (cached).
    """
    max_offset = min(window[0] // 2, num_frames - 1)
    num_positions = height * width
    pair_table = _pair_table(num_frames, max_offset)
    num_pairs = int(pair_table.max()) + 1
    tiling = _tiling(height, width, window, tile)
    query_positions, key_positions, query_owner = _tile_table(tiling, height, width)
    num_outputs = num_frames * num_positions * int(np.prod(window))
    band_index = _band_table(
        _window_comparisons(num_frames, height, width, window),
        num_outputs,
        pair_table,
        tiling,
    )
    num_similarities = (
        num_pairs * tiling.num_tiles * tiling.tile_queries * tiling.tile_keys
    )
    readers = _band_reader_table(band_index, num_similarities)
    key_readers = _key_reader_table(key_positions, num_positions)
    logger.debug(
        "STSS matmul plan: %d frame pairs, %d tiles of %d queries x %d keys",
        num_pairs,
        tiling.num_tiles,
        tiling.tile_queries,
        tiling.tile_keys,
    )

    index_dtype = (
        np.int32
        if max(num_similarities, num_outputs, tiling.num_tiles * tiling.tile_keys)
        < 2**31 - 1
        else np.int64
    )
    band_index, band_mask = _index_and_mask(band_index, index_dtype)
    first_reader, first_mask = _index_and_mask(readers[0], index_dtype)
    second_reader, second_mask = _index_and_mask(readers[1], index_dtype)
    key_readers, key_reader_mask = _index_and_mask(key_readers, index_dtype)
    identity = np.arange(num_positions)
    # A single tile covering the map needs no tile gathers.
    whole_map = np.array_equal(query_positions, identity) and np.array_equal(
        key_positions, identity
    )
    return _MatmulPlan(
        num_frames=num_frames,
        max_offset=max_offset,
        num_tiles=tiling.num_tiles,
        tile_queries=tiling.tile_queries,
        tile_keys=tiling.tile_keys,
        num_similarities=num_similarities,
        query_positions=None if whole_map else query_positions.astype(index_dtype),
        query_owner=None if whole_map else query_owner.astype(index_dtype),
        key_positions=None if whole_map else key_positions.astype(index_dtype),
        key_readers=None if whole_map else key_readers,
        key_reader_mask=None if whole_map else key_reader_mask[..., None],
        band_index=band_index,
        band_mask=band_mask,
        first_reader=first_reader,
        first_mask=first_mask,
        second_reader=None if not second_mask.any() else second_reader,
        second_mask=None if not second_mask.any() else second_mask,
    )


def _masked_gather(params, index: np.ndarray, mask: np.ndarray, axis: int):
    return _backend.take(params, index, axis=axis) * mask


def _band_gather_fn(plan: _MatmulPlan, jit: bool) -> Callable:
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


def _tile_rows(frames, plan: _MatmulPlan) -> tuple:
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
    plan = _matmul_plan(num_frames, height, width, window, tile)
    return _band_gather_fn(plan, jit)


def _stss_matmul(
    normalized,
    shape: tuple[int, int, int, int],
    window: tuple[int, int, int],
    jit: bool,
):
    num_frames, height, width, channels = shape
    tile = _choose_tiles(height, width, window[1], window[2])
    plan = _matmul_plan(num_frames, height, width, window, tile)
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


def _pad_keys(normalized, window: tuple[int, int, int]):
    half_l, half_u, half_v = (size // 2 for size in window)
    return ops.pad(
        normalized,
        [[0, 0], [half_l, half_l], [half_u, half_u], [half_v, half_v], [0, 0]],
    )


def _stss_shift(normalized, window: tuple[int, int, int]):
    length, height_window, width_window = window
    _, num_frames, height, width, _ = normalized.shape
    padded = _pad_keys(normalized, window)
    outputs = []
    for l in range(length):
        for u in range(height_window):
            for v in range(width_window):
                shifted = padded[:, l : l + num_frames, u : u + height, v : v + width]
                outputs.append(ops.sum(normalized * shifted, axis=-1))
    stacked = ops.stack(outputs, axis=-1)
    return ops.reshape(stacked, [-1, num_frames, height, width, *window])


def _stss_patches(normalized, window: tuple[int, int, int]):
    import tensorflow as tf

    length, height_window, width_window = window
    _, num_frames, height, width, channels = normalized.shape
    padded = _pad_keys(normalized, window)
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
def _compiled(backend: str, window: tuple[int, int, int]) -> Callable:
    import tensorflow as tf

    function = _BACKEND_FUNCTIONS[backend]
    return tf.function(
        lambda normalized: function(normalized, window),
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
) -> Any:
    """Computes the spatio-temporal self-similarity of a feature volume.

    Each feature vector is L2-normalised over channels (epsilon 1e-6 added to
    the sum of squares), then compared by dot product with the vectors in an
    `(L, U, V)` window around it in time and space. Displaced positions that
    fall outside the clip or the map give 0 (zero padding).

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

    Returns:
        `[batch, num_frames, height, width, L, U, V]` float32 tensor of cosine
        similarities; index `(L//2, U//2, V//2)` is the position itself.

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
    if backend == "matmul":
        return _stss_matmul(normalized, shape, window, jit)
    if jit:
        return _compiled(backend, window)(normalized)
    return _BACKEND_FUNCTIONS[backend](normalized, window)
