"""The static index tables of the "matmul" STSS backend, planned in NumPy.

For one clip shape, window and spatial tile, the plan says which frame pairs
are multiplied (`_pair_table`), which map positions form each tile's queries
and keys (`_tile_table`), which similarity each output element reads
(`_band_table`), and the reverse gathers of the gradient
(`_band_reader_table`, `_key_reader_table`). `matmul_plan` composes them;
`choose_tiles` picks the tile. `selfy_tf.ops.stss` runs the plan; nothing
here imports TensorFlow or Keras.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)


class MatmulPlan(NamedTuple):
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


def choose_tiles(
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
    frame, because the op's `_pair_similarities` (`selfy_tf.ops.stss`) gives
    one tensor per offset and the band gather concatenates them in that order.

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
    concatenated results of the op's `_pair_similarities`.

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
def matmul_plan(
    num_frames: int,
    height: int,
    width: int,
    window: tuple[int, int, int],
    tile: tuple[int, int],
) -> MatmulPlan:
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
    return MatmulPlan(
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


__all__ = ["MatmulPlan", "choose_tiles", "matmul_plan"]
