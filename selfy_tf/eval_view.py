"""The evaluation view: how a clip becomes model input at evaluation and inference.

Every path that feeds a trained model (`make_dataset(training=False)`,
training-time validation, `selfy eval`, the export signatures, LiteRT,
`selfy predict`, `selfy viz`) goes through `EvalView`, so they all score the
same pixels:

1. **Sampling**: the TSN segment centres of `num_frames` segments, for
   `num_clips` clips spread evenly over the video (`selfy_tf.sampling`).
2. **Resize**: the short side to `scale_size` (aspect ratio kept, the long
   side rounded half up), by default `round(crop_size * 256 / 224)`; or every
   frame to a fixed `eval_size` `(height, width)`, as the paper presets'
   240x320. Bilinear with half-pixel centres and no antialiasing, computed in
   float32 and rounded half up to uint8: the resize training applies to its
   crops (`resize_frames`). Frames already at the target
   size are not resized.
3. **Crop**: one centre crop of `crop_size`, or 3 crops along the long side
   (left, centre, right for landscape frames).

`EvalView.views_tf` is the TensorFlow form (tf.data, SavedModel signatures);
`EvalView.views_numpy` is its NumPy twin (LiteRT, no TensorFlow needed).
TensorFlow is imported only by the `*_tf` methods.

Example:

>>> view = EvalView(num_frames=4, crop_size=32)
>>> view.resize_target(64, 80)
(37, 46)
>>> view.views_numpy(np.zeros((20, 64, 80, 3), np.uint8)).shape
(1, 4, 32, 32, 3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from selfy_tf import sampling

# The ImageNet/TSN test ratio: a 224 crop from frames whose short side is 256.
SCALE_RATIO = 256 / 224
# Crops per clip: the centre one, or three along the long side.
NUM_CROPS_CHOICES = (1, 3)


def default_scale_size(crop_size: int) -> int:
    """Short side frames are resized to before a `crop_size` crop: `round(crop_size * 256 / 224)`."""
    # Never a tie: crop_size * 8 / 7 is an integer or 1/7 to 6/7 past one.
    return int(round(int(crop_size) * SCALE_RATIO))


def scale_short_side(height: int, width: int, short_side: int) -> tuple[int, int]:
    """`(height, width)` of a frame resized so its short side is `short_side`, aspect ratio kept.

    The long side is rounded half up, in integers, so that every resize of
    the project (the evaluation view in NumPy and TensorFlow, the storage
    resize of `selfy tfrecords build --resize-short`) gives the same size.

    >>> scale_short_side(4, 5, 2)
    (2, 3)
    """
    short, long = min(height, width), max(height, width)
    new_long = (2 * long * short_side + short) // (2 * short)
    if height <= width:
        return int(short_side), int(new_long)
    return int(new_long), int(short_side)


@dataclasses.dataclass(frozen=True)
class EvalView:
    """The deterministic evaluation/inference view of a clip.

    Args:
        num_frames: frames per clip the model takes (TSN segments).
        crop_size: side of the square crop the model takes.
        scale_size: short side frames are resized to before cropping
            (aspect ratio kept); default `default_scale_size(crop_size)`.
            Exclusive with `eval_size`.
        eval_size: `(height, width)` every frame is resized to before
            cropping, e.g. `(240, 320)`; None (or `()`) uses `scale_size`.
        num_clips: clips per video, spread evenly (default 1).
        num_crops: crops per clip, 1 (centre) or 3 (along the long side).

    Views are ordered clip-major: view `v = clip * num_crops + crop`.
    """

    num_frames: int
    crop_size: int
    scale_size: int | None = None
    eval_size: tuple[int, int] | None = None
    num_clips: int = 1
    num_crops: int = 1

    def __post_init__(self) -> None:
        for name in ("num_frames", "crop_size", "num_clips"):
            value = getattr(self, name)
            if int(value) < 1:
                raise ValueError(f"`{name}` must be at least 1. Received: {name}={value}.")
            object.__setattr__(self, name, int(value))
        if self.num_crops not in NUM_CROPS_CHOICES:
            raise ValueError(f"`num_crops` must be 1 or 3. Received: num_crops={self.num_crops}.")
        eval_size = tuple(self.eval_size) if self.eval_size is not None else ()
        if eval_size:
            if self.scale_size is not None:
                raise ValueError(
                    "Give `scale_size` or `eval_size`, not both. Received: "
                    f"scale_size={self.scale_size}, eval_size={eval_size}."
                )
            if len(eval_size) != 2 or min(int(size) for size in eval_size) < self.crop_size:
                raise ValueError(
                    f"`eval_size` must be (height, width), both >= crop_size={self.crop_size}, "
                    f"or empty. Received: eval_size={eval_size}."
                )
            object.__setattr__(self, "eval_size", (int(eval_size[0]), int(eval_size[1])))
        else:
            object.__setattr__(self, "eval_size", None)
            scale_size = (
                default_scale_size(self.crop_size) if self.scale_size is None else int(self.scale_size)
            )
            if scale_size < self.crop_size:
                raise ValueError(
                    f"`scale_size` must be >= crop_size={self.crop_size} so the crop fits. "
                    f"Received: scale_size={self.scale_size}."
                )
            object.__setattr__(self, "scale_size", scale_size)

    @property
    def num_views(self) -> int:
        """Views per video (`num_clips * num_crops`)."""
        return self.num_clips * self.num_crops

    # -- the resize rule, stored with a model --------------------------------

    def resize_settings(self) -> dict[str, Any]:
        """The resize rule as JSON: `{"scale_size": S}` or `{"eval_size": [H, W]}`."""
        if self.eval_size is not None:
            return {"eval_size": list(self.eval_size)}
        return {"scale_size": self.scale_size}

    @classmethod
    def from_settings(
        cls, settings: Mapping[str, Any] | None, num_frames: int, crop_size: int, **kwargs: Any
    ) -> "EvalView":
        """The view of a model from its stored `resize_settings()` (None: the default rule).

        Raises:
            ValueError: for unknown keys or bad sizes, naming them.
        """
        settings = dict(settings or {})
        unknown = sorted(set(settings) - {"scale_size", "eval_size"})
        if unknown:
            raise ValueError(
                f"Unknown evaluation view settings {unknown}. Expected `scale_size` or `eval_size`."
            )
        eval_size = settings.get("eval_size") or None
        return cls(
            num_frames=num_frames,
            crop_size=crop_size,
            scale_size=settings.get("scale_size"),
            eval_size=tuple(eval_size) if eval_size else None,
            **kwargs,
        )

    def with_views(self, num_clips: int = 1, num_crops: int = 1) -> "EvalView":
        """The same view with other clip and crop counts."""
        return dataclasses.replace(self, num_clips=num_clips, num_crops=num_crops)

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """`(height, width)` a `height` x `width` frame is resized to."""
        if self.eval_size is not None:
            return self.eval_size
        return scale_short_side(height, width, self.scale_size)

    def crop_offsets(self, height: int, width: int) -> list[tuple[int, int]]:
        """`(top, left)` of each crop in a resized `height` x `width` frame."""
        size = self.crop_size
        if self.num_crops == 1:
            return [((height - size) // 2, (width - size) // 2)]
        if width >= height:
            return [((height - size) // 2, multiple * ((width - size) // 4)) for multiple in (0, 2, 4)]
        return [(multiple * ((height - size) // 4), (width - size) // 2) for multiple in (0, 2, 4)]

    # -- NumPy form -----------------------------------------------------------

    def sample_indices(self, num_available_frames: int) -> np.ndarray:
        """Frame indices of each clip, int64 `[num_clips, num_frames]`."""
        return sampling.sample_eval_indices(num_available_frames, self.num_frames, self.num_clips)

    def views_numpy(self, frames: np.ndarray) -> np.ndarray:
        """The views of one decoded clip, with NumPy only.

        Args:
            frames: uint8 `[num_available_frames, height, width, 3]`, all
                frames of the video.

        Returns:
            uint8 `[num_views, num_frames, crop_size, crop_size, 3]`.

        Raises:
            ValueError: if `frames` is not `[frames, height, width, 3]`.
        """
        frames = _check_clip(frames)
        selected = frames[self.sample_indices(frames.shape[0]).reshape(-1)]
        height, width = self.resize_target(*selected.shape[1:3])
        selected = resize_bilinear_numpy(selected, height, width)
        size = self.crop_size
        crops = [selected[:, top : top + size, left : left + size] for top, left in self.crop_offsets(height, width)]
        # [num_crops, num_clips * num_frames, ...] -> clip-major views.
        stacked = np.stack(crops).reshape(self.num_crops, self.num_clips, self.num_frames, size, size, 3)
        return stacked.transpose(1, 0, 2, 3, 4, 5).reshape(self.num_views, self.num_frames, size, size, 3)

    # -- TensorFlow form ------------------------------------------------------

    def sample_indices_tf(self, num_available_frames):
        """TensorFlow form of `sample_indices`: int32 `[num_clips, num_frames]`."""
        return sampling.sample_eval_indices_tf(num_available_frames, self.num_frames, self.num_clips)

    def resize_tf(self, frames):
        """Resizes uint8 frames `[..., height, width, 3]` by the view's rule (one size for all)."""
        import tensorflow as tf

        frames = tf.convert_to_tensor(frames)
        shape = tf.shape(frames)
        height, width = shape[-3], shape[-2]
        if self.eval_size is not None:
            target_height, target_width = (tf.constant(size, tf.int32) for size in self.eval_size)
        else:
            # `scale_short_side` in integer tensor ops, so both forms agree exactly.
            short, long = tf.minimum(height, width), tf.maximum(height, width)
            new_long = (2 * long * self.scale_size + short) // (2 * short)
            target_height = tf.where(height <= width, self.scale_size, new_long)
            target_width = tf.where(height <= width, new_long, self.scale_size)
        same = tf.logical_and(tf.equal(height, target_height), tf.equal(width, target_width))

        def resize():
            flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], axis=0))
            resized = resize_frames(flat, tf.stack([target_height, target_width]))
            return tf.reshape(
                tf.cast(resized, frames.dtype),
                tf.concat([shape[:-3], [target_height, target_width, shape[-1]]], axis=0),
            )

        return tf.cond(same, lambda: frames, resize)

    def views_from_sampled_tf(self, frames):
        """Resize and crop of frames already sampled with `sample_indices_tf`.

        Args:
            frames: uint8 `[..., num_clips * num_frames, height, width, 3]`,
                clip-major.

        Returns:
            uint8 `[..., num_views, num_frames, crop_size, crop_size, 3]`.
        """
        import tensorflow as tf

        frames = self.resize_tf(frames)
        shape = tf.shape(frames)
        height, width = shape[-3], shape[-2]
        size = self.crop_size
        if self.num_crops == 1:
            offsets = [((height - size) // 2, (width - size) // 2)]
        else:
            landscape = width >= height
            offsets = [
                (
                    tf.where(landscape, (height - size) // 2, multiple * ((height - size) // 4)),
                    tf.where(landscape, multiple * ((width - size) // 4), (width - size) // 2),
                )
                for multiple in (0, 2, 4)
            ]
        crops = tf.stack(
            [frames[..., top : top + size, left : left + size, :] for top, left in offsets], axis=-5
        )
        # [..., num_crops, num_clips * num_frames, ...] -> clip-major views.
        outer = tf.shape(crops)[:-5]
        crops = tf.reshape(
            crops,
            tf.concat([outer, [self.num_crops, self.num_clips, self.num_frames, size, size, 3]], axis=0),
        )
        rank = len(frames.shape)
        leading = list(range(rank - 4))
        views = tf.transpose(crops, leading + [rank - 3, rank - 4] + [rank - 2, rank - 1, rank, rank + 1])
        views = tf.reshape(
            views, tf.concat([outer, [self.num_views, self.num_frames, size, size, 3]], axis=0)
        )
        static = frames.shape[:-4].concatenate([self.num_views, self.num_frames, size, size, 3])
        return tf.ensure_shape(views, static)

    def views_tf(self, frames):
        """The views of decoded clips, the TensorFlow form of `views_numpy`.

        Args:
            frames: uint8 `[..., num_available_frames, height, width, 3]`
                (any frame count; leading axes, e.g. a batch, share it).

        Returns:
            uint8 `[..., num_views, num_frames, crop_size, crop_size, 3]`.
        """
        import tensorflow as tf

        frames = tf.convert_to_tensor(frames)
        indices = tf.reshape(self.sample_indices_tf(tf.shape(frames)[-4]), [-1])
        return self.views_from_sampled_tf(tf.gather(frames, indices, axis=len(frames.shape) - 4))


def resize_frames(frames, size: Sequence[int]):
    """Bilinear resize of uint8 frames `[..., height, width, 3]` to `size`, rounded half up to uint8.

    The resize of the evaluation view and of training's crops
    (`tfrecords.augment`): half-pixel centres, no antialiasing, in float32.
    """
    import tensorflow as tf

    # Resizing float32 input is about twice as fast as resizing uint8 input.
    resized = tf.image.resize(tf.cast(frames, tf.float32), size, method="bilinear")
    # Bilinear (non-antialiased) interpolation of uint8 values stays within
    # [0, 255], so rounding half up needs no clipping (which costs a pass).
    return tf.cast(resized + 0.5, tf.uint8)


def _check_clip(frames: Any) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(
            "Clip frames must be (num_frames, height, width, 3) with at least one frame. "
            f"Received: shape {tuple(frames.shape)}."
        )
    return frames


def _bilinear_weights(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Half-pixel centres, as tf.image.resize(method="bilinear", antialias=False).
    scale = np.float32(in_size / out_size)
    position = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(position)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(position), in_size - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear_numpy(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """NumPy twin of `resize_frames` for uint8 `[..., H, W, 3]`.

    Returns the frames unchanged when they already are `height` x `width`.
    """
    frames = np.asarray(frames)
    if frames.shape[-3:-1] == (height, width):
        return frames
    values = frames.astype(np.float32)
    top, bottom, y_lerp = _bilinear_weights(height, frames.shape[-3])
    left, right, x_lerp = _bilinear_weights(width, frames.shape[-2])
    x_lerp = x_lerp[:, None]
    upper_row = values[..., top, :, :]
    lower_row = values[..., bottom, :, :]
    upper = upper_row[..., left, :] + (upper_row[..., right, :] - upper_row[..., left, :]) * x_lerp
    lower = lower_row[..., left, :] + (lower_row[..., right, :] - lower_row[..., left, :]) * x_lerp
    resized = upper + (lower - upper) * y_lerp[:, None, None]
    # Rounds half up like `resize_frames` (bilinear stays in 0..255).
    return (resized + np.float32(0.5)).astype(np.uint8)


def view_from_clip_shape(
    clip_shape: Sequence[int], settings: Mapping[str, Any] | None = None, **kwargs: Any
) -> EvalView:
    """The view of a model taking clips `(num_frames, size, size)` or `(batch, num_frames, size, size, 3)`."""
    shape = tuple(clip_shape)
    if len(shape) == 5:
        shape = shape[1:4]
    num_frames, height, width = (int(size) for size in shape[:3])
    if height != width:
        raise ValueError(
            f"The model must take square frames. Received: clip shape {tuple(clip_shape)}."
        )
    return EvalView.from_settings(settings, num_frames, height, **kwargs)


__all__ = [
    "EvalView",
    "NUM_CROPS_CHOICES",
    "SCALE_RATIO",
    "default_scale_size",
    "resize_bilinear_numpy",
    "resize_frames",
    "scale_short_side",
    "view_from_clip_shape",
]
