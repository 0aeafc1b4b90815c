"""Reading frames from video files (PyAV) and JPEG frame folders (Pillow).

Nothing here imports TensorFlow, so conversion worker processes stay light.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import numpy as np

from selfy_tf.eval_view import scale_short_side

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".gif",
)


# Frame files a frame folder may hold (a clip given as a folder of images).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


class VideoDecodeError(ValueError):
    """A video or frame folder could not be read (corrupt, empty, missing)."""


def parse_size(text: str) -> tuple[int, int]:
    """Parses `"240x320"` (height x width) into `(240, 320)`.

    Raises:
        ValueError: if `text` is not `HEIGHTxWIDTH` with positive integers.
    """
    parts = str(text).lower().split("x")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        height = width = 0
    if len(parts) != 2 or height <= 0 or width <= 0:
        raise ValueError(
            f"`size` must be HEIGHTxWIDTH with positive integers. Received: {text!r}. "
            "Try 240x320."
        )
    return height, width


def output_size(
    height: int,
    width: int,
    size: Sequence[int] | None = None,
    resize_short: int | None = None,
) -> tuple[int, int]:
    """The `(height, width)` a frame of `height`×`width` is resized to.

    Args:
        height: source frame height.
        width: source frame width.
        size: `(height, width)` to resize every frame to exactly, or None.
        resize_short: length of the short side after an aspect-preserving
            resize (the long side rounded half up, as the evaluation view
            rounds: `selfy_tf.eval_view.scale_short_side`), or None. Cannot
            be combined with `size`.

    Returns:
        The target size; the source size when both options are None.
    """
    if size is not None and resize_short is not None:
        raise ValueError(
            f"Pass `size` or `resize_short`, not both. Received: size={tuple(size)}, "
            f"resize_short={resize_short}."
        )
    if size is not None:
        return int(size[0]), int(size[1])
    if resize_short is not None:
        if resize_short <= 0:
            raise ValueError(f"`resize_short` must be positive. Received: {resize_short}.")
        return scale_short_side(int(height), int(width), int(resize_short))
    return int(height), int(width)


def read_video_frames(
    path: str,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    size: Sequence[int] | None = None,
    resize_short: int | None = None,
) -> np.ndarray:
    """Decodes a video file into RGB frames with PyAV.

    Args:
        path: video file (any container/codec FFmpeg reads).
        fps: keep frames at this rate (drops frames; never duplicates them);
            None keeps every frame.
        max_frames: stop after this many kept frames; None keeps all.
        size: `(height, width)` to resize every frame to, or None.
        resize_short: short side after an aspect-preserving resize, or None.

    Returns:
        `uint8 [num_frames, height, width, 3]`.

    Raises:
        VideoDecodeError: if the file is missing, unreadable, corrupt, has no
            video stream or no decodable frame.
    """
    import av

    if fps is not None and fps <= 0:
        raise ValueError(f"`fps` must be positive. Received: {fps}.")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file not found: {path}")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(f"empty file (0 bytes): {path}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    duration = None
    stopped_early = False
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate) if stream.average_rate else 25.0
            duration = _duration_seconds(container, stream)
            next_time = 0.0
            for index, frame in enumerate(container.decode(stream)):
                time = frame.time if frame.time is not None else index / rate
                times.append(time)
                if fps is not None:
                    if time + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / fps
                    while next_time <= time:
                        next_time += 1.0 / fps
                height, width = output_size(frame.height, frame.width, size, resize_short)
                if (height, width) != (frame.height, frame.width):
                    frame = frame.reformat(width=width, height=height, interpolation="AREA")
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    stopped_early = True
                    break
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, EOFError) as error:
        # FFmpeg's message ends with the file name, already in ours.
        reason = getattr(error, "strerror", None) or str(error)
        if not frames:
            raise VideoDecodeError(f"cannot decode {path}: {reason}") from error
        raise VideoDecodeError(
            f"corrupt or truncated {path}: decoding failed after {len(frames)} frames: {reason}"
        ) from error
    if not frames:
        raise VideoDecodeError(f"no frames decoded from {path} (zero-frame video)")
    if not stopped_early and duration and len(times) > 0:
        span = max(times) - min(times) + 1.0 / rate
        if span < 0.9 * duration - 2.0 / rate:
            raise VideoDecodeError(
                f"truncated {path}: frames cover {span:.2f} s of its {duration:.2f} s"
            )
    return np.stack(frames)


def _duration_seconds(container, stream) -> float | None:
    """The video stream's duration from the headers (the container's if unknown)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def read_frame_folder(
    folder: str,
    frame_paths: Sequence[str],
    *,
    size: Sequence[int] | None = None,
    resize_short: int | None = None,
) -> np.ndarray:
    """Reads a folder of image frames (JPEG, PNG) into RGB frames with Pillow.

    Args:
        folder: the frame folder (only used in error messages and to check
            that it exists).
        frame_paths: the frame files, in time order.
        size: `(height, width)` to resize every frame to, or None.
        resize_short: short side after an aspect-preserving resize, or None.

    Returns:
        `uint8 [num_frames, height, width, 3]`.

    Raises:
        VideoDecodeError: if the folder or a frame is missing or unreadable,
            or `frame_paths` is empty.
    """
    from PIL import Image

    if not os.path.isdir(folder):
        raise VideoDecodeError(f"frame folder not found: {folder}")
    if not frame_paths:
        raise VideoDecodeError(f"no frames in {folder}")
    frames = []
    for frame_path in frame_paths:
        try:
            with Image.open(frame_path) as image:
                image = image.convert("RGB")
                height, width = output_size(image.height, image.width, size, resize_short)
                if (height, width) != (image.height, image.width):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                frames.append(np.asarray(image, dtype=np.uint8))
        except FileNotFoundError as error:
            raise VideoDecodeError(f"missing frame file {frame_path}") from error
        except OSError as error:
            raise VideoDecodeError(f"cannot read frame {frame_path}: {error}") from error
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise VideoDecodeError(
            f"frames of {folder} differ in size {sorted(shapes)}: pass a fixed size"
        )
    return np.stack(frames)


def read_clip(path: str) -> np.ndarray:
    """All frames of a clip to classify: a video file, a folder of frame images, or a `.npy` array.

    Frames keep their size (the model's evaluation view resizes them).

    Returns:
        uint8 `[num_frames, height, width, 3]`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        VideoDecodeError: if it cannot be decoded (a folder without frames,
            a corrupt video).
        ValueError: a `.npy` array that is not `[num_frames, height, width, 3]`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Video not found: {path!r}. Pass a video file, a folder of frame images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or a .npy array [frames, height, width, 3]."
        )
    if os.path.isdir(path):
        frame_paths = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
        return read_frame_folder(path, frame_paths)
    if path.endswith(".npy"):
        frames = np.load(path)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"{path}: a .npy clip must be [num_frames, height, width, 3]. "
                f"Received: shape={frames.shape}."
            )
        return np.clip(frames, 0, 255).astype(np.uint8)
    return read_video_frames(path)
