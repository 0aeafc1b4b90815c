"""Parsing decoded clips into model inputs: sampling, decoding, augmentation."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import tensorflow as tf

from selfy_tf import eval_view as eval_view_lib
from selfy_tf import sampling
from tfrecords import augment
from tfrecords import decoder as decoder_lib

# The reference recipe's clip: 8 frames of 224x224.
DEFAULT_NUM_FRAMES = 8
DEFAULT_CROP_SIZE = 224


class Parser:
    """Makes `(frames, label)` from a decoded clip, for training or evaluation.

    Training: TSN sampling with a random frame per segment, the official
    multi-scale crop decoded straight from the JPEGs of the chosen frames and
    resized to `crop_size`, then a horizontal flip (see `augment.random_flip`).
    Evaluation (deterministic): the evaluation view
    (`selfy_tf.eval_view.EvalView`): segment centres for its `num_clips`
    clips, its resize, its `num_crops` crops (1: centre). Only the chosen
    frames are decoded.

    Args:
        num_frames: frames per clip (segments).
        crop_size: output side.
        eval_view: the evaluation view, with this `num_frames` and
            `crop_size`; None: `EvalView(num_frames, crop_size)` (one centre
            crop of frames whose short side is `crop_size * 256 / 224`).
        no_flip_classes: classes never flipped in training.
        flip_label_map: `{class: class after flipping}` for training.
        scales: multi-scale crop scales.
        frame_stride: 0 (default) for TSN segments in training; `k >= 1`
            for `num_frames` consecutive frames every `k` frames from a
            random start (`sampling.sample_stream_indices`, the frames a
            stream sees). Evaluation keeps the evaluation view.

    Output:
        training: uint8 `[num_frames, crop_size, crop_size, 3]`, int32 label.
        evaluation: the same with one view; with `num_clips * num_crops > 1`
        views, uint8 `[num_views, num_frames, crop_size, crop_size, 3]`, view
        `v = clip * num_crops + crop`.
    """

    def __init__(
        self,
        num_frames: int = DEFAULT_NUM_FRAMES,
        crop_size: int = DEFAULT_CROP_SIZE,
        eval_view: eval_view_lib.EvalView | None = None,
        no_flip_classes: Sequence[int] = (),
        flip_label_map: Mapping[int, int] | None = None,
        scales: Sequence[float] = augment.MULTI_SCALE_CROP_SCALES,
        frame_stride: int = 0,
    ) -> None:
        # The view validates the frame count and the sizes.
        default_view = eval_view_lib.EvalView(num_frames=num_frames, crop_size=crop_size)
        if eval_view is None:
            eval_view = default_view
        elif (eval_view.num_frames, eval_view.crop_size) != (default_view.num_frames, default_view.crop_size):
            raise ValueError(
                f"`eval_view` takes {eval_view.num_frames} frames of {eval_view.crop_size}x"
                f"{eval_view.crop_size}, but num_frames={num_frames} and crop_size={crop_size}. "
                "Give the same sizes."
            )
        self.view = eval_view
        self.num_frames = self.view.num_frames
        self.crop_size = self.view.crop_size
        self.num_clips = self.view.num_clips
        self.num_crops = self.view.num_crops
        self.no_flip_classes = tuple(int(value) for value in no_flip_classes)
        self.flip_label_map = dict(flip_label_map or {})
        self.scales = tuple(float(value) for value in scales)
        if isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 0:
            raise ValueError(
                "`frame_stride` must be 0 (TSN segments) or a positive integer (stream "
                f"sampling). Received: frame_stride={frame_stride!r}."
            )
        self.frame_stride = frame_stride
        # Validates the flip settings now rather than inside tf.data.
        augment.random_flip(tf.zeros([1, 1, 1, 3]), 0, [0, 0], self.no_flip_classes, self.flip_label_map)

    @property
    def num_views(self) -> int:
        """Evaluation views per video (`num_clips * num_crops`)."""
        return self.view.num_views

    def _parse_train_data(self, decoded: dict, seed) -> tuple[tf.Tensor, tf.Tensor]:
        encoded = decoded[decoder_lib.ENCODED_FRAMES]
        index_seed, crop_seed, flip_seed = tf.unstack(
            tf.random.experimental.stateless_split(seed, 3)
        )
        if self.frame_stride:
            indices = sampling.sample_stream_indices_tf(
                tf.size(encoded), self.num_frames, self.frame_stride, index_seed
            )
        else:
            indices = sampling.sample_train_indices_tf(tf.size(encoded), self.num_frames, index_seed)
        selected = tf.gather(encoded, indices)
        shape = tf.io.extract_jpeg_shape(selected[0])
        window = augment.multi_scale_crop_window(
            shape[0], shape[1], self.crop_size, crop_seed, self.scales
        )
        frames = augment.decode_crop(selected, window, self.num_frames)
        # Flipping the crop (before resizing) touches fewer pixels on average.
        frames, label = augment.random_flip(
            frames, decoded[decoder_lib.LABEL], flip_seed, self.no_flip_classes, self.flip_label_map
        )
        return augment.resize_frames(frames, [self.crop_size, self.crop_size]), label

    def _parse_eval_data(self, decoded: dict) -> tuple[tf.Tensor, tf.Tensor]:
        encoded = decoded[decoder_lib.ENCODED_FRAMES]
        indices = self.view.sample_indices_tf(tf.size(encoded))
        selected = tf.gather(encoded, tf.reshape(indices, [-1]))
        frames = tf.stack(
            [tf.io.decode_jpeg(selected[index], channels=3) for index in range(self.num_clips * self.num_frames)]
        )
        views = self.view.views_from_sampled_tf(frames)
        if self.num_views == 1:
            views = views[0]
        return views, decoded[decoder_lib.LABEL]

    def parse_fn(self, is_training: bool) -> Callable:
        """The parse function: `(decoded, seed) -> (frames, label)` in training,
        `decoded -> (frames, label)` in evaluation."""
        return self._parse_train_data if is_training else self._parse_eval_data
