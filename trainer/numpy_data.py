"""Training input without TensorFlow: clips held in NumPy arrays, fed to `model.fit`.

For machines with Keras on JAX and no TensorFlow (`selfy train --backend jax
--data synthetic:motion` or `--data clips.npz`). Two sources:

- `synthetic:motion[:NUM_TRAIN[:NUM_VALIDATION[:SIZE]]]`: the synthetic motion
  dataset (`selfy_tf.datasets.synthetic_motion`) generated in memory, by
  default 800 + 200 clips of 8 frames (or `model.num_frames` if more) of
  64x64, as in `selfy demo`, dataset seed 0.
- `PATH.npz`: `train_frames` uint8 `[clips, frames, height, width, 3]`,
  `train_labels` integer `[clips]`, optionally `validation_frames` /
  `validation_labels`, and `labels` (class names, strings; default
  "class0", "class1", ...). All clips of a split share one shape.

Batches are `keras.utils.PyDataset`s, so `fit` needs no tf.data. They follow
the TFRecord pipeline's recipe: training takes one random frame per TSN
segment (`selfy_tf.sampling.sample_train_indices`), the official
multi-scale crop (`tfrecords.crop_windows`), a horizontal flip with
probability 1/2 as `trainer.flips` plans it (mirror classes swap labels,
some classes are never flipped), and the bilinear resize to
`model.input_size` (`selfy_tf.eval_view.resize_bilinear_numpy`); validation
is the evaluation view (`EvalView.views_numpy`), the same pixels as
`selfy eval`. What differs from the TFRecord pipeline:

- the random draws come from NumPy generators, so a seed gives other (equally
  distributed) frames, crops and flips than tf.data's stateless ops;
- the epoch's clip order is a full permutation per pass (tf.data shuffles
  with a bounded buffer);
- frames are already decoded, so the crop is cut from pixels, not decoded
  from JPEG (same pixels for lossless sources).

Like the TFRecord pipeline, epoch `e`'s batches are a function of
`(train.seed, e)` and batch `b` can be made without making the ones before
it, which is what makes mid-epoch resume exact.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import keras
import numpy as np

from selfy_tf.eval_view import EvalView, resize_bilinear_numpy
from selfy_tf.sampling import sample_stream_indices, sample_train_indices
from tfrecords.crop_windows import multi_scale_crop_window_numpy

__all__ = ["ClipArrays", "EvalBatches", "TrainBatches", "augment_clip", "is_numpy_source", "load_clip_arrays"]

SYNTHETIC_PREFIX = "synthetic:"
_SYNTHETIC_DEFAULTS = (800, 200, 64)


def is_numpy_source(data: str) -> bool:
    """Whether `--data` names an in-memory source (`synthetic:...` or a `.npz` file)."""
    return data.startswith(SYNTHETIC_PREFIX) or data.endswith(".npz")


@dataclasses.dataclass
class ClipArrays:
    """Decoded clips of a dataset, per split."""

    source: str
    labels: list[str]
    train_frames: np.ndarray
    train_labels: np.ndarray
    validation_frames: np.ndarray | None
    validation_labels: np.ndarray | None


def _synthetic(source: str, num_frames: int, seed: int = 0) -> ClipArrays:
    from selfy_tf.datasets import synthetic_motion

    name, *numbers = source[len(SYNTHETIC_PREFIX):].split(":")
    if name != "motion" or len(numbers) > 3 or not all(number.isdigit() for number in numbers):
        raise ValueError(
            f"Unknown synthetic dataset {source!r}. Expected 'synthetic:motion' or "
            "'synthetic:motion:NUM_TRAIN[:NUM_VALIDATION[:SIZE]]', e.g. 'synthetic:motion:800:200:64'."
        )
    num_train, num_validation, size = [int(value) for value in numbers] + list(_SYNTHETIC_DEFAULTS[len(numbers):])
    if num_train < 1:
        raise ValueError(f"{source!r}: NUM_TRAIN must be at least 1. Received: {num_train}.")
    # 8 frames as in `selfy demo`, more when the model samples more.
    length = max(8, int(num_frames))
    train_frames, train_labels = synthetic_motion.generate_split(num_train, seed, "train", length, size)
    validation_frames = validation_labels = None
    if num_validation:
        validation_frames, validation_labels = synthetic_motion.generate_split(
            num_validation, seed, "validation", length, size
        )
    return ClipArrays(
        source, list(synthetic_motion.CLASS_NAMES), train_frames, train_labels, validation_frames, validation_labels
    )


def _split_arrays(archive, path: str, split: str, required: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    frames_key, labels_key = f"{split}_frames", f"{split}_labels"
    if frames_key not in archive.files:
        if required:
            raise ValueError(
                f"{path} has no `{frames_key}` array. Expected `train_frames` uint8 "
                f"[clips, frames, height, width, 3] and `train_labels` [clips]; found {sorted(archive.files)}."
            )
        return None, None
    frames = archive[frames_key]
    if labels_key not in archive.files:
        raise ValueError(f"{path} has `{frames_key}` but no `{labels_key}` (integer [clips]).")
    labels = archive[labels_key]
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(
            f"{path}: `{frames_key}` must be uint8 [clips, frames, height, width, 3]. "
            f"Received: {frames.dtype} {tuple(frames.shape)}."
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != frames.shape[:1]:
        raise ValueError(
            f"{path}: `{labels_key}` must be integers of shape ({frames.shape[0]},), one per clip of "
            f"`{frames_key}`. Received: {labels.dtype} {tuple(labels.shape)}."
        )
    return frames, labels.astype(np.int64)


def _npz(path: str) -> ClipArrays:
    if not os.path.exists(path):
        raise FileNotFoundError(f"Clip archive not found: {path}")
    with np.load(path, allow_pickle=False) as archive:
        train_frames, train_labels = _split_arrays(archive, path, "train", required=True)
        validation_frames, validation_labels = _split_arrays(archive, path, "validation", required=False)
        if "labels" in archive.files:
            labels = [str(name) for name in archive["labels"].reshape(-1)]
        else:
            labels = [f"class{index}" for index in range(int(train_labels.max()) + 1)]
    return ClipArrays(path, labels, train_frames, train_labels, validation_frames, validation_labels)


def load_clip_arrays(source: str, num_frames: int) -> ClipArrays:
    """Loads (or generates) the clips named by `source`; checks labels and frame counts.

    Raises:
        FileNotFoundError: no such `.npz` file.
        ValueError: an unknown synthetic name, missing or misshapen arrays, a
            label outside `[0, len(labels))`, or clips with fewer frames than
            `num_frames`.
    """
    arrays = _synthetic(source, num_frames) if source.startswith(SYNTHETIC_PREFIX) else _npz(source)
    for split in ("train", "validation"):
        frames = getattr(arrays, f"{split}_frames")
        labels = getattr(arrays, f"{split}_labels")
        if frames is None:
            continue
        if len(labels) and (labels.min() < 0 or labels.max() >= len(arrays.labels)):
            bad = int(labels[(labels < 0) | (labels >= len(arrays.labels))][0])
            raise ValueError(
                f"{source}: `{split}_labels` holds label {bad}, outside [0, {len(arrays.labels)}) "
                f"({len(arrays.labels)} class names)."
            )
        if frames.shape[1] < num_frames:
            raise ValueError(
                f"The {split} clips of {source} have {frames.shape[1]} frames but `model.num_frames`="
                f"{num_frames}: every clip would repeat frames. Lower `model.num_frames`."
            )
    return arrays


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[labels]


def augment_clip(
    frames: np.ndarray,
    label: int,
    rng: np.random.Generator,
    num_frames: int,
    crop_size: int,
    scales: Sequence[float],
    no_flip_classes: Sequence[int] = (),
    flip_label_map: Mapping[int, int] | None = None,
    frame_stride: int = 0,
) -> tuple[np.ndarray, int]:
    """One training view of a decoded clip `[frames, height, width, 3]` (see the module docstring).

    Returns:
        `(frames, label)`: uint8 `[num_frames, crop_size, crop_size, 3]`, and
        the label, `flip_label_map[label]` when the clip was flipped and its
        class is in the map (as `tfrecords.augment.random_flip`).
    """
    label = int(label)
    if frame_stride:
        indices = sample_stream_indices(frames.shape[0], num_frames, frame_stride, rng)
    else:
        indices = sample_train_indices(frames.shape[0], num_frames, rng)
    selected = frames[indices]
    top, left, height, width = multi_scale_crop_window_numpy(
        frames.shape[1], frames.shape[2], crop_size, rng, scales
    )
    crop = selected[:, top : top + height, left : left + width]
    # The coin is drawn for every clip so a class's flips do not shift the
    # draws of the clips after it.
    if rng.random() < 0.5 and label not in no_flip_classes:
        crop = crop[:, :, ::-1]
        label = int((flip_label_map or {}).get(label, label))
    return resize_bilinear_numpy(crop, crop_size, crop_size), label


class TrainBatches(keras.utils.PyDataset):
    """Training batches `[skip_steps, skip_steps + num_steps)` of one epoch.

    Clip order: pass `p` over the data is the permutation drawn from
    `(seed, p)`; the epoch's batches are consecutive slices of the passes
    (repeated as needed). Clip `i` of the stream is augmented with a generator
    seeded by `(seed, i)`.
    """

    def __init__(
        self,
        frames: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        seed: int,
        skip_steps: int,
        num_steps: int,
        num_frames: int,
        crop_size: int,
        scales: Sequence[float],
        no_flip_classes: Sequence[int] = (),
        flip_label_map: Mapping[int, int] | None = None,
        frame_stride: int = 0,
    ):
        super().__init__()
        self.frames, self.labels = frames, labels
        self.num_classes, self.batch_size, self.seed = int(num_classes), int(batch_size), int(seed)
        self.skip_steps, self.num_steps = int(skip_steps), int(num_steps)
        self.augment = dict(
            num_frames=num_frames,
            crop_size=crop_size,
            scales=tuple(scales),
            no_flip_classes=tuple(no_flip_classes),
            flip_label_map=dict(flip_label_map or {}),
            frame_stride=int(frame_stride),
        )
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.num_steps

    def _clip_index(self, position: int) -> int:
        count = len(self.labels)
        epoch_pass = position // count
        if epoch_pass not in self._orders:
            self._orders[epoch_pass] = np.random.default_rng([self.seed, epoch_pass]).permutation(count)
        return int(self._orders[epoch_pass][position % count])

    def __getitem__(self, index: int):
        first = (self.skip_steps + int(index)) * self.batch_size
        clips, labels = [], []
        for position in range(first, first + self.batch_size):
            clip = self._clip_index(position)
            rng = np.random.default_rng([self.seed, position])
            frames, label = augment_clip(self.frames[clip], self.labels[clip], rng, **self.augment)
            clips.append(frames)
            labels.append(label)
        return np.stack(clips), _one_hot(np.asarray(labels), self.num_classes)


class EvalBatches(keras.utils.PyDataset):
    """`num_steps` validation batches of the evaluation view: the clips in
    order, each once, then padding clips that fill the last batch.

    Yields `(frames, one-hot labels, weights)`: frames uint8 `[batch,
    num_frames, size, size, 3]`, or `[batch, num_views, num_frames, size,
    size, 3]` when `view` has several views; weights float32 `[batch]`,
    `weight` for a clip and 0 for padding (zero frames).
    """

    def __init__(
        self,
        frames: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        batch_size: int,
        num_steps: int,
        view: EvalView,
        weight: float = 1.0,
    ):
        super().__init__()
        self.frames, self.labels = frames, labels
        self.num_classes, self.batch_size, self.num_steps = int(num_classes), int(batch_size), int(num_steps)
        self.view = view
        self.weight = float(weight)

    def __len__(self) -> int:
        return self.num_steps

    def _views(self, position: int) -> np.ndarray:
        views = self.view.views_numpy(self.frames[position])
        return views[0] if self.view.num_views == 1 else views

    def __getitem__(self, index: int):
        positions = range(int(index) * self.batch_size, (int(index) + 1) * self.batch_size)
        real = [position for position in positions if position < len(self.labels)]
        clips = [self._views(position) for position in real]
        padding = self.batch_size - len(real)
        shape = clips[0].shape if clips else self._views(0).shape
        clips += [np.zeros(shape, np.uint8)] * padding
        labels = np.concatenate([self.labels[real], np.zeros(padding, self.labels.dtype)])
        weights = np.concatenate([np.full(len(real), self.weight, np.float32), np.zeros(padding, np.float32)])
        return np.stack(clips), _one_hot(labels, self.num_classes), weights
