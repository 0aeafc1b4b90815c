"""Figures: STSS maps, motion fields, Grad-CAM overlays, curves, confusion matrices.

Every function renders with Matplotlib's non-interactive Agg backend, writes
one file atomically (temporary file, then `os.replace`) and returns its path.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import numpy as np

from selfy_tf.files import atomic_path
from selfy_tf.viz.motion_field import MotionField, soft_argmax_displacement


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path: str) -> str:
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(figure)
    return os.fspath(path)


def _hide_axes(axis) -> None:
    axis.set_xticks([])
    axis.set_yticks([])


def save_gif(images: Sequence[np.ndarray], path: str, frame_duration_ms: int = 250) -> str:
    """Writes uint8 RGB images `[height, width, 3]` as a looping GIF."""
    from PIL import Image

    if not images:
        raise ValueError("`images` must hold at least one image. Received: 0 images.")
    pictures = [Image.fromarray(np.asarray(image, np.uint8)) for image in images]
    with atomic_path(path, suffix=".gif") as temporary:
        pictures[0].save(
            temporary,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=int(frame_duration_ms),
            loop=0,
        )
    return os.fspath(path)


def heatmap_overlay(frame: np.ndarray, heatmap: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Blends a `[height, width]` map in [0, 1] (jet colours) over a uint8 frame."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - opacity) * np.asarray(frame, np.float64) + opacity * colours
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def draw_arrows(
    frame: np.ndarray,
    origins: np.ndarray,
    vectors: np.ndarray,
    scale: int = 4,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Draws arrows on an upscaled copy of a frame (for GIFs).

    Args:
        frame: uint8 `[height, width, 3]`.
        origins: `[num_arrows, 2]` (y, x) pixel positions.
        vectors: `[num_arrows, 2]` (dy, dx) pixel lengths; NaN rows skipped.
        scale: integer upscaling of the frame so that arrows are visible.
        colour: RGB of the arrows.

    Returns:
        uint8 `[height * scale, width * scale, 3]`.
    """
    from PIL import Image, ImageDraw

    picture = Image.fromarray(np.asarray(frame, np.uint8)).resize(
        (frame.shape[1] * scale, frame.shape[0] * scale), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(picture)
    for (origin_y, origin_x), (vector_y, vector_x) in zip(origins, vectors):
        if not (np.isfinite(vector_y) and np.isfinite(vector_x)):
            continue
        start = ((origin_x + 0.5) * scale, (origin_y + 0.5) * scale)
        end = (start[0] + vector_x * scale, start[1] + vector_y * scale)
        draw.line([start, end], fill=colour, width=max(1, scale // 2))
        length = math.hypot(vector_x, vector_y) * scale
        if length > 1e-3:
            # Two short strokes at 150 degrees from the shaft make the head.
            unit_x, unit_y = (end[0] - start[0]) / length, (end[1] - start[1]) / length
            head = min(3.0 * scale, 0.5 * length)
            for sign in (1.0, -1.0):
                cos_a, sin_a = math.cos(math.radians(150)), sign * math.sin(math.radians(150))
                draw.line(
                    [
                        end,
                        (
                            end[0] + head * (cos_a * unit_x - sin_a * unit_y),
                            end[1] + head * (sin_a * unit_x + cos_a * unit_y),
                        ),
                    ],
                    fill=colour,
                    width=max(1, scale // 2),
                )
    return np.asarray(picture)


def plot_clip(frames: np.ndarray, path: str, title: str = "") -> str:
    """The frames of a clip side by side."""
    plt = _pyplot()
    num_frames = len(frames)
    figure, axes = plt.subplots(1, num_frames, figsize=(1.3 * num_frames, 1.6), squeeze=False)
    for index, axis in enumerate(axes[0]):
        axis.imshow(frames[index])
        axis.set_title(f"t={index}", fontsize=7)
        _hide_axes(axis)
    if title:
        figure.suptitle(title, fontsize=9)
    return _save_figure(figure, path)


def plot_stss_query(
    maps: np.ndarray,
    path: str,
    frames: np.ndarray | None = None,
    query: tuple[int, int, int] | None = None,
    stride: float = 1.0,
    temperature: float = 0.05,
    title: str = "",
) -> str:
    """The `U x V` similarity map of a query point at each temporal offset.

    Args:
        maps: `[L, U, V]` similarities of the query point.
        path: PNG path.
        frames: optional `[num_frames, height, width, 3]`; shown above the
            maps (frame `t + l - L//2`) with the query point and its window.
        query: `(frame_index, row, column)` in STSS cells (needed with
            `frames`).
        stride: pixels per STSS cell.
        temperature: soft-argmax temperature of the arrow drawn on each map.
        title: figure title.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    length, window_height, window_width = maps.shape
    rows = 2 if frames is not None else 1
    figure, axes = plt.subplots(rows, length, figsize=(2.0 * length, 2.1 * rows), squeeze=False)
    displacement, _ = soft_argmax_displacement(maps, temperature=temperature)
    image = None
    for offset_index in range(length):
        relative = offset_index - length // 2
        axis = axes[-1][offset_index]
        image = axis.imshow(maps[offset_index], cmap="viridis", vmin=-1.0, vmax=1.0)
        axis.plot(window_width // 2, window_height // 2, "w+", markersize=8)
        dy, dx = displacement[offset_index]
        if np.isfinite(dy) and np.isfinite(dx) and np.abs(maps[offset_index]).max() > 0:
            axis.annotate(
                "",
                xy=(window_width // 2 + dx, window_height // 2 + dy),
                xytext=(window_width // 2, window_height // 2),
                arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.5},
            )
        axis.set_title(f"offset {relative:+d}", fontsize=8)
        _hide_axes(axis)
        if frames is not None and query is not None:
            frame_axis = axes[0][offset_index]
            _hide_axes(frame_axis)
            target = query[0] + relative
            if 0 <= target < len(frames):
                frame_axis.imshow(frames[target])
                centre_x = (query[2] + 0.5) * stride - 0.5
                centre_y = (query[1] + 0.5) * stride - 0.5
                frame_axis.plot(centre_x, centre_y, "r+", markersize=8)
                frame_axis.add_patch(
                    Rectangle(
                        (centre_x - window_width / 2 * stride, centre_y - window_height / 2 * stride),
                        window_width * stride,
                        window_height * stride,
                        fill=False,
                        edgecolor="white",
                        linewidth=0.8,
                    )
                )
                frame_axis.set_xlim(-0.5, frames.shape[2] - 0.5)
                frame_axis.set_ylim(frames.shape[1] - 0.5, -0.5)
                frame_axis.set_title(f"frame {target}", fontsize=8)
            else:
                frame_axis.set_title("outside clip", fontsize=8)
                frame_axis.set_facecolor("0.85")
    if image is not None:
        figure.colorbar(image, ax=list(axes[-1]), shrink=0.8, label="cosine similarity")
    if title:
        figure.suptitle(title, fontsize=10)
    return _save_figure(figure, path)


def plot_motion_field(
    frames: np.ndarray,
    field: MotionField,
    path: str,
    stride: float,
    min_confidence: float = 0.0,
    title: str = "",
    min_gain: float | None = None,
) -> str:
    """Soft-argmax displacements, one row per non-zero temporal offset.

    Each arrow starts at an STSS cell of frame `t` and ends where the
    soft-argmax places that cell's content in frame `t + offset`.

    Args:
        frames: `[num_frames, height, width, 3]`.
        field: motion field of the clip (batch index 0 is drawn).
        path: PNG path.
        stride: pixels per STSS cell.
        min_confidence: hide arrows whose peak similarity is lower.
        title: figure title.
        min_gain: hide arrows where the best match beats standing still
            (`field.motion_gain`) by less than this; None shows all.
    """
    plt = _pyplot()
    displacement = field.displacement[0]
    confidence = field.confidence[0]
    num_frames, height, width = displacement.shape[:3]
    offsets = [int(offset) for offset in field.temporal_offsets if offset != 0]
    figure, axes = plt.subplots(
        len(offsets), num_frames, figsize=(1.5 * num_frames, 1.6 * len(offsets)), squeeze=False
    )
    grid_y, grid_x = np.meshgrid(
        (np.arange(height) + 0.5) * stride - 0.5,
        (np.arange(width) + 0.5) * stride - 0.5,
        indexing="ij",
    )
    for row, offset in enumerate(offsets):
        offset_index = offset + field.window[0] // 2
        for frame_index in range(num_frames):
            axis = axes[row][frame_index]
            axis.imshow(frames[frame_index])
            _hide_axes(axis)
            axis.set_xlim(-0.5, frames.shape[2] - 0.5)
            axis.set_ylim(frames.shape[1] - 0.5, -0.5)
            vectors = displacement[frame_index, :, :, offset_index] * stride
            keep = np.isfinite(vectors).all(-1) & (
                confidence[frame_index, :, :, offset_index] >= min_confidence
            )
            if min_gain is not None:
                keep &= field.motion_gain[0, frame_index, :, :, offset_index] >= min_gain
            if keep.any():
                axis.quiver(
                    grid_x[keep],
                    grid_y[keep],
                    vectors[..., 1][keep],
                    vectors[..., 0][keep],
                    angles="xy",
                    scale_units="xy",
                    scale=1.0,
                    color="white",
                    width=0.02,
                )
            if row == 0:
                axis.set_title(f"t={frame_index}", fontsize=8)
            if frame_index == 0:
                axis.set_ylabel(f"to t{offset:+d}", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save_figure(figure, path)


def plot_gradcam(frames: np.ndarray, maps: np.ndarray, path: str, title: str = "") -> str:
    """Grad-CAM maps blended over each frame."""
    plt = _pyplot()
    num_frames = len(frames)
    figure, axes = plt.subplots(1, num_frames, figsize=(1.5 * num_frames, 1.8), squeeze=False)
    for index, axis in enumerate(axes[0]):
        axis.imshow(heatmap_overlay(frames[index], maps[index]))
        axis.set_title(f"t={index}", fontsize=8)
        _hide_axes(axis)
    if title:
        figure.suptitle(title, fontsize=10)
    return _save_figure(figure, path)


def plot_accuracy(
    accuracies: Mapping[str, Sequence[float]], path: str, chance: float | None = None
) -> str:
    """Bar chart of top-1 accuracy per model: mean with min-max whiskers and each seed."""
    plt = _pyplot()
    names = list(accuracies)
    figure, axis = plt.subplots(figsize=(1.2 + 1.3 * len(names), 3.0))
    for position, name in enumerate(names):
        values = np.asarray(accuracies[name], np.float64) * 100.0
        axis.bar(position, values.mean(), color=f"C{position}", alpha=0.7)
        if len(values) > 1:
            axis.errorbar(position, values.mean(), yerr=values.std(), color="black", capsize=4)
        axis.scatter(np.full(len(values), position), values, color="black", s=10, zorder=3)
    if chance is not None:
        axis.axhline(chance * 100.0, color="gray", linestyle="--", label="chance")
        axis.legend(fontsize=8)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("validation top-1 (%)")
    axis.set_ylim(0, 100)
    return _save_figure(figure, path)


def plot_training_curves(
    histories: Mapping[str, Mapping[str, Sequence[float]]],
    path: str,
    metrics: Sequence[str] = ("loss", "val_loss", "accuracy", "val_accuracy"),
) -> str:
    """Training curves, one panel per metric, one line per model.

    Args:
        histories: `{model_name: {metric: values per epoch}}`; metrics a
            history lacks are skipped.
        path: PNG path.
        metrics: metrics to draw, one panel each.
    """
    plt = _pyplot()
    present = [metric for metric in metrics if any(metric in history for history in histories.values())]
    if not present:
        present = sorted({metric for history in histories.values() for metric in history})[:4]
    columns = max(1, len(present))
    figure, axes = plt.subplots(1, columns, figsize=(3.2 * columns, 2.6), squeeze=False)
    for axis, metric in zip(axes[0], present):
        for index, (name, history) in enumerate(histories.items()):
            values = history.get(metric)
            if values is not None and len(values):
                # Markers: a run of one or a few epochs is a point, not a line.
                axis.plot(range(1, len(values) + 1), values, color=f"C{index}", label=name, marker="o", markersize=3)
        axis.set_title(metric, fontsize=9)
        axis.set_xlabel("epoch", fontsize=8)
    axes[0][0].legend(fontsize=7)
    return _save_figure(figure, path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], path: str, title: str = ""
) -> str:
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    plt = _pyplot()
    matrix = np.asarray(matrix, np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = 1.5 + 0.45 * len(class_names)
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    axis.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right", fontsize=7)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            if matrix[row, column]:
                axis.text(
                    column,
                    row,
                    int(matrix[row, column]),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if normalised[row, column] > 0.5 else "black",
                )
    figure.colorbar(image, ax=axis, shrink=0.8)
    if title:
        axis.set_title(title, fontsize=10)
    return _save_figure(figure, path)


def plot_top1_by_frames_seen(
    curves: Mapping[str, Sequence[float]],
    path: str,
    streams: Sequence[str] = (),
    chance: float | None = None,
) -> str:
    """Early recognition: top-1 against the number of frames seen, one line per model.

    Args:
        curves: `{model_name: top-1 after 1, 2, ... frames}` (fractions).
        path: PNG path.
        streams: names in `curves` that ran as streams (drawn solid; the
            offline models dashed).
        chance: drawn as a grey line when given.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4.6, 3.0))
    for index, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, np.float64) * 100.0
        stream = name in streams
        axis.plot(
            range(1, len(values) + 1),
            values,
            color=f"C{index}",
            linestyle="-" if stream else "--",
            marker="o",
            markersize=3,
            label=f"{name} (stream)" if stream else f"{name} (offline)",
        )
    if chance is not None:
        axis.axhline(chance * 100.0, color="gray", linestyle=":", label="chance")
    length = max((len(values) for values in curves.values()), default=1)
    axis.set_xticks(range(1, length + 1))
    axis.set_xlabel("frames seen")
    axis.set_ylabel("validation top-1 (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=7)
    return _save_figure(figure, path)
