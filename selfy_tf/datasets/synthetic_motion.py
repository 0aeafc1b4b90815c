"""A synthetic video dataset whose classes differ only by motion.

Each clip shows one randomly textured object on a randomly textured, static
background. The class says how the object moves (left, right, up, down,
clockwise or counter-clockwise rotation, growing, shrinking, moving then
stopping, or not at all); everything else (colours, textures, shape, size,
position, orientation, speed, pixel noise) is drawn at random and shared by all
classes. The per-frame distributions of position, size and orientation are
identical for opposite motions (a left-moving clip played backwards is a
right-moving clip) and close across all classes (a class without a kind of
motion still draws its parameters and holds one random frame's value), so no
single frame tells the class: a frame-wise model (TSN) is left near chance
while models that compare frames (TSM, SELFY) can learn it.

Clips are deterministic functions of `(seed, split, clip index)`; splits are
class-balanced.

Example:

>>> import numpy as np
>>> from selfy_tf.datasets import synthetic_motion
>>> rng = np.random.default_rng(0)
>>> frames = synthetic_motion.generate_clip(0, rng, num_frames=8, size=64)
>>> frames.shape, frames.dtype
((8, 64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator, Sequence

import numpy as np

from selfy_tf.files import atomic_path

CLASS_NAMES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "grow",
    "shrink",
    "move_then_stop",
    "static",
)

# Image coordinates: y grows downwards, x to the right.
_DIRECTIONS = {
    "move_left": (0.0, -1.0),
    "move_right": (0.0, 1.0),
    "move_up": (-1.0, 0.0),
    "move_down": (1.0, 0.0),
}

# Classes whose meaning a horizontal flip changes (left <-> right, clockwise
# <-> counter-clockwise): training must not flip them.
FLIP_SENSITIVE_CLASSES: tuple[str, ...] = (
    "move_left",
    "move_right",
    "rotate_clockwise",
    "rotate_counterclockwise",
)

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """Ranges of the random factors of a clip.

    Lengths are fractions of the frame side, so the same config works at any
    frame size.

    Args:
        radius_range: object half-size (before growing or shrinking).
        speed_range: translation speed per frame.
        rotation_degrees_range: rotation speed in degrees per frame.
        scale_ratio_range: size ratio between the last and first frame of a
            growing clip (its inverse for shrinking).
        aspect_range: ratio of the object's long to short side.
        noise_std_range: standard deviation of per-frame Gaussian pixel noise,
            in 0..255 units.
        background_contrast: how far the background's second colour lies
            from its first, as a fraction of the way to another random
            colour (0: flat, 1: two unrelated colours).
        background_grain_std: standard deviation of the background's fixed
            fine-grained texture, in 0..255 units.
        background_frequency_range: spatial frequency of the background's
            gratings, in cycles per frame side (high values: fine stripes).
        background_luminance_range: luminance (0..255) of the background's
            colours; their hues are random.
        object_luminance_range: luminance of the object's colours. Keeping
            it above the background's makes the object stand out in every
            clip (as a figure on a ground), whatever the hues.
        max_outside: how far the object may reach past the frame's edge, as
            a fraction of its radius (0: wholly inside in every frame; 1: its
            centre may sit on the edge), as when a filmed object is partly
            out of view.
        min_color_distance: how far (0..255, in the RGB channel where they
            differ most) each of the object's colours must lie from the
            background's mean colour; colours are drawn again until they do.
            With overlapping luminance ranges this keeps an object of about
            the background's brightness visible by its hue alone, as a
            coloured object often is in a user's recordings (0: no bound).
    """

    radius_range: tuple[float, float] = (0.11, 0.17)
    speed_range: tuple[float, float] = (0.05, 0.08)
    rotation_degrees_range: tuple[float, float] = (12.0, 24.0)
    scale_ratio_range: tuple[float, float] = (1.8, 2.6)
    aspect_range: tuple[float, float] = (1.3, 2.0)
    noise_std_range: tuple[float, float] = (2.0, 8.0)
    background_contrast: float = 0.4
    background_grain_std: float = 8.0
    background_frequency_range: tuple[float, float] = (0.5, 3.0)
    background_luminance_range: tuple[float, float] = (15.0, 90.0)
    object_luminance_range: tuple[float, float] = (160.0, 250.0)
    max_outside: float = 0.0
    min_color_distance: float = 0.0


DEFAULT_CONFIG = MotionConfig()


def class_index(name: str) -> int:
    """Returns the index of class `name` in `CLASS_NAMES`.

    Raises:
        ValueError: if `name` is not a class of this dataset.
    """
    if name not in CLASS_NAMES:
        raise ValueError(
            f"Unknown synthetic motion class. Received: name={name!r}. "
            f"Expected one of {list(CLASS_NAMES)}."
        )
    return CLASS_NAMES.index(name)


def no_flip_classes(classes: Sequence[str] | None = None) -> tuple[int, ...]:
    """Indices (into `classes`, default `CLASS_NAMES`) that must not be flipped."""
    classes = _resolve_classes(classes)
    return tuple(index for index, name in enumerate(classes) if name in FLIP_SENSITIVE_CLASSES)


def _check_frames_and_size(num_frames: int, size: int) -> None:
    if int(num_frames) != num_frames or num_frames < 2:
        raise ValueError(
            f"`num_frames` must be an integer >= 2 (a class is defined by motion "
            f"between frames). Received: num_frames={num_frames!r}."
        )
    if int(size) != size or size < 16:
        raise ValueError(
            f"`size` must be an integer >= 16 (frame side in pixels). "
            f"Received: size={size!r}."
        )


_LUMINANCE_WEIGHTS = np.array([0.299, 0.587, 0.114])


def _random_color(rng: np.random.Generator, luminance_range: tuple[float, float]) -> np.ndarray:
    """A colour of random hue and saturation with luminance in `luminance_range`."""
    target = rng.uniform(*luminance_range)
    color = rng.uniform(0.05, 1.0, size=3)
    color = color * (target / float(color @ _LUMINANCE_WEIGHTS))
    # Bright saturated colours can leave the gamut: pull them towards grey,
    # which keeps the luminance.
    peak = color.max()
    if peak > 255.0:
        mix = (peak - 255.0) / (peak - target)
        color = color + mix * (target - color)
    return np.clip(color, 0.0, 255.0)


# Draws of an object colour before the farthest one so far is taken.
_MAX_COLOR_DRAWS = 64


def _distinct_color(
    rng: np.random.Generator,
    luminance_range: tuple[float, float],
    reference: np.ndarray,
    min_distance: float,
) -> np.ndarray:
    """A `_random_color` at least `min_distance` from `reference` in some RGB
    channel (the farthest of `_MAX_COLOR_DRAWS` draws if none is). With
    `min_distance=0` it draws exactly one colour, as `_random_color` does."""
    best, best_distance = None, -1.0
    for _ in range(_MAX_COLOR_DRAWS):
        color = _random_color(rng, luminance_range)
        distance = float(np.abs(color - reference).max())
        if distance >= min_distance:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def _grating_field(
    rng: np.random.Generator,
    coord_y: np.ndarray,
    coord_x: np.ndarray,
    num_waves: int,
    frequency_range: tuple[float, float],
) -> np.ndarray:
    """Sum of random sinusoidal gratings over the given coordinates, in [0, 1]."""
    field = np.zeros(np.broadcast(coord_y, coord_x).shape, np.float64)
    for _ in range(num_waves):
        angle = rng.uniform(0.0, 2.0 * math.pi)
        frequency = rng.uniform(*frequency_range)
        phase = rng.uniform(0.0, 2.0 * math.pi)
        field += np.sin(
            2.0 * math.pi * frequency * (math.cos(angle) * coord_x + math.sin(angle) * coord_y)
            + phase
        )
    field /= num_waves
    return 0.5 + 0.5 * field


def _colorize(field: np.ndarray, color_a: np.ndarray, color_b: np.ndarray) -> np.ndarray:
    return color_a + field[..., None] * (color_b - color_a)


def sample_trajectory(
    name: str,
    rng: np.random.Generator,
    num_frames: int,
    size: int,
    config: MotionConfig,
    radius: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws the motion of the object of one clip.

    Args:
        name: class name, one of `CLASS_NAMES`.
        rng: random generator.
        num_frames: frames per clip.
        size: frame side in pixels.
        config: ranges of the random factors.
        radius: radius in pixels of a circle around the object at scale 1.

    Returns:
        `(centres, angles, scales)`: `[num_frames, 2]` object centres as
        (y, x) pixels, `[num_frames]` orientations in radians (growing =
        clockwise on screen) and `[num_frames]` scale factors.
    """
    time = np.arange(num_frames, dtype=np.float64) - (num_frames - 1) / 2.0
    angle0 = rng.uniform(0.0, 2.0 * math.pi)
    angles = np.full(num_frames, angle0)
    # Classes without a given kind of motion still draw its parameters and
    # hold one random frame's value, so that every class has the same
    # per-frame distribution of size, position and orientation.
    log_ratio = math.log(rng.uniform(*config.scale_ratio_range))
    if name in ("grow", "shrink"):
        sign = 1.0 if name == "grow" else -1.0
        scales = np.exp(sign * log_ratio * time / max(num_frames - 1, 1))
    else:
        scales = np.full(num_frames, math.exp(log_ratio * rng.uniform(-0.5, 0.5)))
    speed = rng.uniform(*config.speed_range) * size
    direction_name = name if name in _DIRECTIONS else list(_DIRECTIONS)[rng.integers(4)]
    displacement = np.outer(time, _DIRECTIONS[direction_name]) * speed
    if name == "move_then_stop":
        heading = rng.uniform(0.0, 2.0 * math.pi)
        steps = np.minimum(np.arange(num_frames), num_frames // 2).astype(np.float64)
        steps -= steps.mean()
        displacement = np.outer(steps, (math.sin(heading), math.cos(heading))) * speed
    if name in ("rotate_clockwise", "rotate_counterclockwise"):
        step = math.radians(rng.uniform(*config.rotation_degrees_range))
        # With y pointing down, a growing angle turns clockwise on screen.
        sign = 1.0 if name == "rotate_clockwise" else -1.0
        angles = angle0 + sign * step * time
    # Keep the object inside the frame for the whole clip, up to the
    # fraction of it that may lie outside.
    extent = radius * scales.max() * (1.0 - config.max_outside)
    low = extent + 1.0 - displacement.min(axis=0)
    high = size - 1.0 - extent - displacement.max(axis=0)
    high = np.maximum(high, low)
    centre0 = rng.uniform(low, high)
    if name not in _DIRECTIONS and name != "move_then_stop":
        displacement = np.broadcast_to(displacement[rng.integers(num_frames)], displacement.shape)
    return centre0 + displacement, angles, scales


def generate_clip(
    class_index: int,
    rng: np.random.Generator,
    num_frames: int = 8,
    size: int = 64,
    config: MotionConfig = DEFAULT_CONFIG,
) -> np.ndarray:
    """Renders one clip of class `class_index`.

    Args:
        class_index: index into `CLASS_NAMES`.
        rng: source of every random factor; the same generator state gives
            the same clip.
        num_frames: frames per clip (>= 2).
        size: frame height and width in pixels (>= 16).
        config: ranges of the random factors.

    Returns:
        `[num_frames, size, size, 3]` uint8 RGB frames.

    Raises:
        ValueError: for an unknown class index, fewer than 2 frames or a
            frame side below 16.
    """
    if not 0 <= int(class_index) < len(CLASS_NAMES) or int(class_index) != class_index:
        raise ValueError(
            f"`class_index` must be an integer in [0, {len(CLASS_NAMES)}). "
            f"Received: class_index={class_index!r}."
        )
    _check_frames_and_size(num_frames, size)
    name = CLASS_NAMES[int(class_index)]
    grid_y, grid_x = np.meshgrid(
        np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij"
    )

    # Background: low-frequency gratings between two random colours, plus a
    # fixed fine-grained noise so that it has texture everywhere.
    background_a = _random_color(rng, config.background_luminance_range)
    background_b = background_a + config.background_contrast * (
        _random_color(rng, config.background_luminance_range) - background_a
    )
    background = _colorize(
        _grating_field(rng, grid_y / size, grid_x / size, 3, config.background_frequency_range),
        background_a,
        background_b,
    )
    background += rng.normal(0.0, config.background_grain_std, size=(size, size, 3))

    # Object: superellipse with a grating texture fixed to its own frame, so
    # that rotation and scaling are visible inside it as well as at its edge.
    radius = rng.uniform(*config.radius_range) * size
    aspect = rng.uniform(*config.aspect_range)
    half_long, half_short = radius, radius / aspect
    exponent = rng.uniform(2.0, 6.0)
    texture_waves = [
        (
            rng.uniform(0.0, 2.0 * math.pi),
            rng.uniform(0.8, 2.5),
            rng.uniform(0.0, 2.0 * math.pi),
        )
        for _ in range(2)
    ]
    background_mean = (background_a + background_b) / 2.0
    color_a, color_b = (
        _distinct_color(rng, config.object_luminance_range, background_mean, config.min_color_distance)
        for _ in range(2)
    )
    # A superellipse reaches out to its bounding box's corners.
    bounding_radius = math.hypot(half_long, half_short)
    centres, angles, scales = sample_trajectory(
        name, rng, num_frames, size, config, bounding_radius
    )
    noise_std = rng.uniform(*config.noise_std_range)

    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for frame_index in range(num_frames):
        centre_y, centre_x = centres[frame_index]
        cos_a, sin_a = math.cos(angles[frame_index]), math.sin(angles[frame_index])
        scale = scales[frame_index]
        offset_y, offset_x = grid_y - centre_y, grid_x - centre_x
        # Object coordinates, in units of the object's long half-size.
        local_x = (cos_a * offset_x + sin_a * offset_y) / (half_long * scale)
        local_y = (-sin_a * offset_x + cos_a * offset_y) / (half_long * scale)
        rho = (
            np.abs(local_x) ** exponent + np.abs(local_y * aspect) ** exponent
        ) ** (1.0 / exponent)
        # About one pixel of anti-aliased edge keeps sub-pixel motion visible.
        alpha = np.clip((1.0 - rho) * half_short * scale + 0.5, 0.0, 1.0)
        texture = np.zeros_like(local_x)
        for angle, frequency, phase in texture_waves:
            texture += np.sin(
                2.0 * math.pi * frequency * (math.cos(angle) * local_x + math.sin(angle) * local_y)
                + phase
            )
        texture = 0.5 + 0.25 * texture
        object_rgb = _colorize(texture, color_a, color_b)
        image = background + alpha[..., None] * (object_rgb - background)
        image += rng.normal(0.0, noise_std, size=image.shape)
        frames[frame_index] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return frames


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0) -> str:
    """Writes frames as an H.264 MP4 file with PyAV (nearly lossless, CRF 10).

    Args:
        path: output file; its folder is created.
        frames: uint8 `[num_frames, height, width, 3]` with even height and
            width (4:2:0 chroma subsampling).
        fps: frame rate.

    Returns:
        The path written.

    Raises:
        ValueError: for frames that are not uint8 RGB with even sides.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            "`frames` must be uint8 [num_frames, height, width, 3]. "
            f"Received: shape={frames.shape}, dtype={frames.dtype}."
        )
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"`frames` must have an even height and width. Received: shape={frames.shape}."
        )
    with atomic_path(path, suffix=".mp4") as temporary:
        with av.open(temporary, mode="w") as container:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "10", "preset": "veryfast"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return os.fspath(path)


def _resolve_classes(classes: Sequence[str] | None) -> tuple[str, ...]:
    if classes is None:
        return CLASS_NAMES
    classes = tuple(classes)
    if not classes:
        raise ValueError("`classes` must name at least one class. Received: classes=().")
    for name in classes:
        class_index(name)
    if len(set(classes)) != len(classes):
        raise ValueError(f"`classes` has duplicates. Received: classes={list(classes)}.")
    return classes


def _split_id(split: str) -> int:
    if split not in _SPLIT_IDS:
        raise ValueError(
            f"Unknown split. Received: split={split!r}. Expected one of {list(_SPLIT_IDS)}."
        )
    return _SPLIT_IDS[split]


def split_labels(num_clips: int, seed: int, split: str = "train", num_classes: int = 10) -> np.ndarray:
    """Class-balanced, shuffled label indices of a split.

    Each class gets `num_clips // num_classes` clips, and the first
    `num_clips % num_classes` classes one more.
    """
    if int(num_clips) != num_clips or num_clips < 1:
        raise ValueError(f"`num_clips` must be a positive integer. Received: num_clips={num_clips!r}.")
    labels = np.arange(num_clips) % num_classes
    np.random.default_rng([int(seed), _split_id(split), 7919]).shuffle(labels)
    return labels


def iter_split(
    num_clips: int,
    seed: int,
    split: str = "train",
    num_frames: int = 8,
    size: int = 64,
    classes: Sequence[str] | None = None,
    config: MotionConfig = DEFAULT_CONFIG,
) -> Iterator[tuple[np.ndarray, int, str]]:
    """Yields the clips of a split one at a time.

    Args:
        num_clips: clips in the split.
        seed: dataset seed; the same seed gives the same clips.
        split: `"train"`, `"validation"` or `"test"`; each split draws
            different clips from the same seed.
        num_frames: frames per clip.
        size: frame side in pixels.
        classes: names of the classes to use (default: all of `CLASS_NAMES`);
            labels index into this sequence.
        config: ranges of the random factors.

    Yields:
        `(frames, label_index, media_id)`: uint8 frames
        `[num_frames, size, size, 3]`, the label index into `classes` and a
        unique id such as `"train-000042"`.

    Raises:
        ValueError: for an unknown split or class, or bad sizes.
    """
    classes = _resolve_classes(classes)
    _check_frames_and_size(num_frames, size)
    labels = split_labels(num_clips, seed, split, len(classes))
    split_id = _split_id(split)
    for clip_index, label in enumerate(labels):
        rng = np.random.default_rng([int(seed), split_id, clip_index])
        frames = generate_clip(
            class_index(classes[label]), rng, num_frames=num_frames, size=size, config=config
        )
        yield frames, int(label), f"{split}-{clip_index:06d}"


def generate_split(
    num_clips: int,
    seed: int,
    split: str = "train",
    num_frames: int = 8,
    size: int = 64,
    classes: Sequence[str] | None = None,
    config: MotionConfig = DEFAULT_CONFIG,
) -> tuple[np.ndarray, np.ndarray]:
    """Generates a whole split in memory.

    Arguments are those of `iter_split`.

    Returns:
        `(clips, labels)`: uint8 `[num_clips, num_frames, size, size, 3]` and
        int64 `[num_clips]` label indices into `classes`.
    """
    clips = np.empty((num_clips, num_frames, size, size, 3), np.uint8)
    labels = np.empty((num_clips,), np.int64)
    for clip_index, (frames, label, _) in enumerate(
        iter_split(num_clips, seed, split, num_frames, size, classes, config)
    ):
        clips[clip_index] = frames
        labels[clip_index] = label
    return clips, labels


def check_dataset_settings(
    num_train: int,
    num_validation: int,
    num_frames: int = 8,
    size: int = 64,
    classes: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Checks the settings of a train + validation dataset before any clip is made.

    Args:
        num_train: training clips.
        num_validation: validation clips.
        num_frames: frames per clip.
        size: frame side in pixels.
        classes: class names to use (default: all of `CLASS_NAMES`).

    Returns:
        The class names, in label order.

    Raises:
        ValueError: for an unknown or repeated class, bad sizes or a count
            that is not a positive integer.
    """
    classes = _resolve_classes(classes)
    _check_frames_and_size(num_frames, size)
    for name, value in (("num_train", num_train), ("num_validation", num_validation)):
        if int(value) != value or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}.")
    return classes
