"""Folders of MP4 clips like a user's own recordings, for testing training on them.

A second synthetic source, independent of `synthetic_motion` (the demo's):
frames at 160x120 or 320x240, 16 to 24 of them, an object of random shape,
colour, size and position on a textured or noisy background with sensor
noise in every frame. The classes differ only in motion, so a single frame
cannot tell them apart: `slide_left` / `slide_right` (a pair that a
horizontal flip exchanges), `grow` / `shrink` and `still`.

The tree is what `selfy tfrecords build --format folders` reads,
`ROOT/<class>/<clip>.mp4`:

>>> from selfy_tf.datasets import user_videos
>>> paths = user_videos.write_folder("my_videos", clips_per_class=16, seed=0)
>>> held_out = user_videos.write_folder("held_out", clips_per_class=16, seed=1)
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from selfy_tf.datasets.synthetic_motion import write_video

__all__ = ["CLASS_NAMES", "FRAME_SIZES", "generate_clip", "write_folder"]

CLASS_NAMES: tuple[str, ...] = ("slide_left", "slide_right", "grow", "shrink", "still")

# (height, width) of the recordings; each clip draws one.
FRAME_SIZES: tuple[tuple[int, int], ...] = ((120, 160), (240, 320))

_SHAPES = ("disk", "square", "triangle", "ring")


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A static float RGB background: smooth colour blobs, stripes or plain noise."""
    kind = rng.integers(3)
    base = rng.uniform(40.0, 215.0, size=3)
    if kind == 0:
        # Low-frequency colour texture: coarse noise upsampled bilinearly.
        cells = rng.integers(3, 9)
        coarse = rng.normal(0.0, 45.0, size=(cells + 1, cells + 1, 3))
        ys = np.linspace(0.0, cells, height)
        xs = np.linspace(0.0, cells, width)
        y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
        bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
        texture = top * (1 - fy) + bottom * fy
    elif kind == 1:
        # Stripes at a random angle and period.
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(0.08, 0.3) * min(height, width)
        y, x = np.mgrid[0:height, 0:width].astype(np.float64)
        phase = (x * math.cos(angle) + y * math.sin(angle)) * 2.0 * math.pi / period
        contrast = rng.uniform(15.0, 50.0, size=3)
        texture = np.sin(phase)[..., None] * contrast
    else:
        # Fixed-pattern noise.
        texture = rng.normal(0.0, rng.uniform(10.0, 35.0), size=(height, width, 3))
    return base + texture


def _mask(shape: str, height: int, width: int, cy: float, cx: float, radius: float) -> np.ndarray:
    """Soft-edged [height, width] coverage of a shape centred at (cy, cx)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    dy, dx = y - cy, x - cx
    if shape == "disk":
        distance = np.hypot(dy, dx) - radius
    elif shape == "square":
        distance = np.maximum(np.abs(dy), np.abs(dx)) - radius * 0.85
    elif shape == "ring":
        distance = np.abs(np.hypot(dy, dx) - radius * 0.75) - radius * 0.3
    else:
        # A triangle: three half-planes.
        normals = ((0.0, 1.0), (0.866, -0.5), (-0.866, -0.5))
        distance = np.max([ny * -dy + nx * dx for nx, ny in normals], axis=0) - radius * 0.5
    return np.clip(0.5 - distance, 0.0, 1.0)


def generate_clip(
    class_name: str,
    rng: np.random.Generator,
    frame_size: tuple[int, int] = (120, 160),
    num_frames: int = 16,
) -> np.ndarray:
    """One clip of `class_name` as uint8 `[num_frames, height, width, 3]`.

    The object's start position, size, colour and shape, the background and
    the speed are random; only the motion depends on the class.

    Raises:
        ValueError: for an unknown class or a clip shorter than 2 frames.
    """
    if class_name not in CLASS_NAMES:
        raise ValueError(f"Unknown class {class_name!r}. Expected one of {list(CLASS_NAMES)}.")
    if num_frames < 2:
        raise ValueError(f"`num_frames` must be >= 2. Received: num_frames={num_frames}.")
    height, width = frame_size
    short = min(height, width)
    background = _background(rng, height, width)
    color = rng.uniform(0.0, 255.0, size=3)
    # Keep the object visible against the background's mean colour.
    while np.abs(color - background.mean(axis=(0, 1))).max() < 70.0:
        color = rng.uniform(0.0, 255.0, size=3)
    shape = _SHAPES[rng.integers(len(_SHAPES))]
    radius = rng.uniform(0.08, 0.16) * short
    progress = np.linspace(0.0, 1.0, num_frames)

    if class_name in ("slide_left", "slide_right"):
        travel = rng.uniform(0.35, 0.55) * width
        start = rng.uniform(radius, width - radius - travel)
        xs = start + travel * progress
        if class_name == "slide_left":
            xs = xs[::-1]
        ys = np.full(num_frames, rng.uniform(radius, height - radius))
        radii = np.full(num_frames, radius)
    else:
        # Room for the largest radius a growing object reaches.
        scale = rng.uniform(1.8, 2.5)
        small = radius * 0.7
        large = min(small * scale, 0.3 * short)
        cy = rng.uniform(large, height - large)
        cx = rng.uniform(large, width - large)
        ys, xs = np.full(num_frames, cy), np.full(num_frames, cx)
        if class_name == "grow":
            radii = small + (large - small) * progress
        elif class_name == "shrink":
            radii = large - (large - small) * progress
        else:
            radii = np.full(num_frames, rng.uniform(small, large))
    noise_std = rng.uniform(4.0, 12.0)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for index in range(num_frames):
        alpha = _mask(shape, height, width, ys[index], xs[index], radii[index])[..., None]
        image = background * (1.0 - alpha) + color * alpha
        image += rng.normal(0.0, noise_std, size=image.shape)
        frames[index] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


def write_folder(
    root: str | os.PathLike,
    clips_per_class: int = 16,
    seed: int = 0,
    classes: Sequence[str] = CLASS_NAMES,
    frame_sizes: Sequence[tuple[int, int]] = FRAME_SIZES,
    frame_counts: tuple[int, int] = (16, 24),
    fps: float = 12.0,
) -> list[str]:
    """Writes `root/<class>/<class>_<seed>_<k>.mp4`, `clips_per_class` per class.

    Each clip draws its frame size from `frame_sizes` and its length from
    `frame_counts` (inclusive). Another `seed` gives another set of clips of
    the same kind (a held-out set). Existing files are kept, so an
    interrupted call resumes.

    Returns:
        The paths of the clips, class by class.

    Raises:
        ValueError: for an unknown class, fewer than 1 clip or a bad range.
    """
    if clips_per_class < 1:
        raise ValueError(f"`clips_per_class` must be >= 1. Received: {clips_per_class}.")
    low, high = frame_counts
    if not 2 <= low <= high:
        raise ValueError(f"`frame_counts` must be (low, high) with 2 <= low <= high. Received: {frame_counts}.")
    paths = []
    for name in classes:
        if name not in CLASS_NAMES:
            raise ValueError(f"Unknown class {name!r}. Expected some of {list(CLASS_NAMES)}.")
        for clip in range(clips_per_class):
            path = os.path.join(os.fspath(root), name, f"{name}_{seed}_{clip:03d}.mp4")
            paths.append(path)
            if os.path.exists(path):
                continue
            rng = np.random.default_rng([seed, CLASS_NAMES.index(name), clip])
            size = tuple(frame_sizes[rng.integers(len(frame_sizes))])
            frames = generate_clip(name, rng, size, int(rng.integers(low, high + 1)))
            write_video(path, frames, fps=fps)
    return paths
