"""Motion read from the STSS: soft-argmax displacement per temporal offset.

For each position `(t, y, x)` and each temporal offset `l` of the STSS window,
the `U x V` similarity map says where the feature at `(t, y, x)` reappears in
frame `t + l - L//2`. A soft-argmax over `(u, v)` turns the map into a
displacement vector `(dy, dx)` (in feature-map cells), as in the soft-argmax
variant of the SELFY paper's feature extraction (Kwon et al., ICCV 2021,
following the kernel soft-argmax of Lee et al., CVPR 2019). A least-squares
fit `displacement(l) = (l - L//2) * velocity` over the offsets gives one
velocity per position: the motion field.

Example:

>>> import numpy as np
>>> from selfy_tf.viz import motion_field
>>> features = np.random.default_rng(0).normal(size=(1, 4, 8, 8, 16))
>>> field = motion_field.compute_motion_field(features, window=(3, 5, 5))
>>> field.displacement.shape, field.velocity.shape
((1, 4, 8, 8, 3, 2), (1, 4, 8, 8, 2))
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass
class MotionField:
    """Soft-argmax motion read from an STSS volume.

    Attributes:
        displacement: `[batch, num_frames, height, width, L, 2]` (dy, dx) in
            feature-map cells from frame `t` to frame `t + l - L//2`; NaN
            where that frame lies outside the clip.
        velocity: `[batch, num_frames, height, width, 2]` (dy, dx) cells per
            frame, the least-squares slope of the displacements over the
            temporal offsets; NaN where no offset other than 0 is inside
            the clip.
        confidence: `[batch, num_frames, height, width, L]` the largest
            similarity in each `U x V` map (NaN outside the clip).
        window: the STSS window `(L, U, V)`.
        stationary: `[batch, num_frames, height, width, L]` the similarity
            at zero displacement; `confidence - stationary` says how much
            better a moved match is than standing still.
    """

    displacement: np.ndarray
    velocity: np.ndarray
    confidence: np.ndarray
    window: tuple[int, int, int]
    stationary: np.ndarray | None = None

    @property
    def motion_gain(self) -> np.ndarray:
        """`confidence - stationary`: 0 where standing still matches best."""
        if self.stationary is None:
            raise ValueError("This MotionField has no `stationary` similarities.")
        return self.confidence - self.stationary

    @property
    def temporal_offsets(self) -> np.ndarray:
        """`[L]` signed frame offsets `l - L//2`."""
        length = self.window[0]
        return np.arange(length) - length // 2


def _check_window(window: Sequence[int]) -> tuple[int, int, int]:
    window = tuple(int(size) for size in window)
    if len(window) != 3 or any(size < 1 or size % 2 == 0 for size in window):
        raise ValueError(
            "`window` must be three odd integers (L, U, V). "
            f"Received: window={window!r}. Try window=(5, 9, 9)."
        )
    return window


def stss_valid_mask(
    num_frames: int, height: int, width: int, window: Sequence[int]
) -> np.ndarray:
    """Where the STSS compares with a position inside the clip.

    Args:
        num_frames, height, width: size of the feature volume.
        window: `(L, U, V)`.

    Returns:
        bool `[num_frames, height, width, L, U, V]`: True where
        `(t + l - L//2, y + u - U//2, x + v - V//2)` lies inside the clip.
    """
    length, window_height, window_width = _check_window(window)

    def inside(size: int, window_size: int) -> np.ndarray:
        position = np.arange(size)[:, None] + np.arange(window_size)[None, :] - window_size // 2
        return (position >= 0) & (position < size)

    time_ok = inside(num_frames, length)[:, None, None, :, None, None]
    row_ok = inside(height, window_height)[None, :, None, None, :, None]
    column_ok = inside(width, window_width)[None, None, :, None, None, :]
    return time_ok & row_ok & column_ok


def soft_argmax_displacement(
    similarity: np.ndarray,
    temperature: float = 0.05,
    valid: np.ndarray | None = None,
    kernel_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft-argmax over the last two axes of similarity maps.

    `weights = softmax(similarity / temperature)` over `(u, v)`, optionally
    multiplied by a Gaussian of standard deviation `kernel_sigma` around the
    hard argmax (kernel soft-argmax, which ignores secondary peaks); the
    displacement is the weighted mean of `(u - U//2, v - V//2)`.

    Args:
        similarity: `[..., U, V]` similarity maps.
        temperature: softmax temperature (> 0); lower is closer to a hard
            argmax.
        valid: optional bool mask broadcastable to `similarity`; masked
            entries get no weight. Maps with no valid entry give NaN.
        kernel_sigma: optional Gaussian width in cells for the kernel
            soft-argmax; None for the plain soft-argmax.

    Returns:
        `(displacement, peak)`: `[..., 2]` (dy, dx) and `[...]` the largest
        valid similarity of each map.

    Raises:
        ValueError: for a non-positive `temperature` or `kernel_sigma`, or
            fewer than 2 dimensions.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim < 2:
        raise ValueError(
            "`similarity` must have at least 2 dimensions [..., U, V]. "
            f"Received: shape={similarity.shape}."
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive. Received: temperature={temperature!r}.")
    if kernel_sigma is not None and not kernel_sigma > 0:
        raise ValueError(
            f"`kernel_sigma` must be positive or None. Received: kernel_sigma={kernel_sigma!r}."
        )
    window_height, window_width = similarity.shape[-2:]
    offsets_y = (np.arange(window_height) - window_height // 2).astype(np.float64)
    offsets_x = (np.arange(window_width) - window_width // 2).astype(np.float64)
    if valid is None:
        valid = np.ones(similarity.shape, bool)
    valid = np.broadcast_to(np.asarray(valid, bool), similarity.shape)
    logits = np.where(valid, similarity / temperature, -np.inf)
    flat = logits.reshape(*logits.shape[:-2], -1)
    any_valid = np.isfinite(flat).any(axis=-1)
    peak_logit = np.where(any_valid, flat.max(axis=-1, initial=-np.inf), 0.0)
    with np.errstate(invalid="ignore"):
        weights = np.exp(flat - peak_logit[..., None])
    weights = np.where(np.isfinite(flat), weights, 0.0)
    if kernel_sigma is not None:
        argmax = np.argmax(flat, axis=-1)
        centre_y = offsets_y[argmax // window_width]
        centre_x = offsets_x[argmax % window_width]
        grid_y = np.repeat(offsets_y, window_width)
        grid_x = np.tile(offsets_x, window_height)
        squared = (grid_y - centre_y[..., None]) ** 2 + (grid_x - centre_x[..., None]) ** 2
        weights = weights * np.exp(-squared / (2.0 * kernel_sigma**2))
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = weights / total[..., None]
    weights = weights.reshape(logits.shape)
    displacement = np.stack(
        [
            (weights * offsets_y[:, None]).sum(axis=(-2, -1)),
            (weights * offsets_x[None, :]).sum(axis=(-2, -1)),
        ],
        axis=-1,
    )
    displacement[~any_valid] = np.nan
    peak = np.where(any_valid, peak_logit * temperature, np.nan)
    return displacement, peak


def fit_velocity(displacement: np.ndarray, temporal_offsets: np.ndarray) -> np.ndarray:
    """Least-squares velocity from displacements at several temporal offsets.

    Fits `displacement[..., l, :] = temporal_offsets[l] * velocity` over the
    offsets whose displacement is not NaN.

    Args:
        displacement: `[..., L, 2]`.
        temporal_offsets: `[L]` signed frame offsets.

    Returns:
        `[..., 2]` velocity per frame; NaN where no non-zero offset is valid.
    """
    offsets = np.asarray(temporal_offsets, np.float64)[:, None]
    known = np.isfinite(displacement)
    numerator = np.where(known, displacement * offsets, 0.0).sum(axis=-2)
    denominator = np.where(known, offsets**2, 0.0).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, np.nan)


def motion_field_from_stss(
    similarity: np.ndarray,
    temperature: float = 0.05,
    kernel_sigma: float | None = None,
) -> MotionField:
    """Motion field of an STSS volume.

    Args:
        similarity: `[batch, num_frames, height, width, L, U, V]` STSS (as
            `selfy_tf.ops.stss` returns it).
        temperature: soft-argmax temperature.
        kernel_sigma: Gaussian width of the kernel soft-argmax, or None.

    Returns:
        A `MotionField`.

    Raises:
        ValueError: if `similarity` is not 7-D.
    """
    similarity = np.asarray(similarity, np.float64)
    if similarity.ndim != 7:
        raise ValueError(
            "`similarity` must be [batch, num_frames, height, width, L, U, V]. "
            f"Received: shape={similarity.shape}."
        )
    _, num_frames, height, width, *window = similarity.shape
    window = _check_window(window)
    valid = stss_valid_mask(num_frames, height, width, window)[None]
    displacement, peak = soft_argmax_displacement(
        similarity, temperature=temperature, valid=valid, kernel_sigma=kernel_sigma
    )
    offsets = np.arange(window[0]) - window[0] // 2
    stationary = similarity[..., window[1] // 2, window[2] // 2]
    stationary = np.where(np.isnan(peak), np.nan, stationary)
    return MotionField(
        displacement=displacement,
        velocity=fit_velocity(displacement, offsets),
        confidence=peak,
        window=window,
        stationary=stationary,
    )


def patch_features(frames: np.ndarray, patch_size: int = 4, stride: int | None = None) -> np.ndarray:
    """Pixel-level features for an STSS: mean-free `patch_size` x `patch_size` patches.

    Cosine similarity of mean-free patches is their normalised
    cross-correlation, so the STSS of these features shows the motion in the
    pixels themselves, independent of any trained model.

    Args:
        frames: `[num_frames, height, width, 3]` (or with a leading batch
            axis).
        patch_size: patch side in pixels.
        stride: step between patches (default `patch_size`, no overlap);
            also the pixels per STSS cell.

    Returns:
        float32 `[batch, num_frames, rows, columns, patch_size * patch_size
        * 3]` with `rows = (height - patch_size) // stride + 1` (columns
        likewise); patch `(row, column)` starts at pixel `(row * stride,
        column * stride)`.
    """
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 4:
        frames = frames[None]
    if frames.ndim != 5:
        raise ValueError(
            "`frames` must be [num_frames, height, width, channels] or "
            f"[batch, num_frames, height, width, channels]. Received: shape={frames.shape}."
        )
    stride = patch_size if stride is None else stride
    if int(patch_size) < 1 or int(stride) < 1:
        raise ValueError(
            "`patch_size` and `stride` must be positive integers. "
            f"Received: patch_size={patch_size!r}, stride={stride!r}."
        )
    windows = np.lib.stride_tricks.sliding_window_view(frames, (patch_size, patch_size), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]
    # [batch, time, rows, columns, channels, patch, patch] -> flat descriptors.
    batch, num_frames, rows, columns = windows.shape[:4]
    patches = windows.transpose(0, 1, 2, 3, 5, 6, 4).reshape(batch, num_frames, rows, columns, -1)
    return patches - patches.mean(axis=-1, keepdims=True)


def compute_motion_field(
    features,
    window: Sequence[int] = (5, 9, 9),
    temperature: float = 0.05,
    kernel_sigma: float | None = None,
    backend: str = "matmul",
) -> MotionField:
    """STSS of a feature volume, then its soft-argmax motion field.

    Args:
        features: `[batch, num_frames, height, width, channels]` features
            (array or tensor).
        window: STSS window `(L, U, V)`, odd sizes.
        temperature: soft-argmax temperature.
        kernel_sigma: Gaussian width of the kernel soft-argmax, or None.
        backend: `backend` of `selfy_tf.ops.stss`.

    Returns:
        A `MotionField`.
    """
    from selfy_tf import ops

    window = _check_window(window)
    similarity = ops.stss(features, window=window, backend=backend)
    return motion_field_from_stss(
        np.asarray(similarity), temperature=temperature, kernel_sigma=kernel_sigma
    )
