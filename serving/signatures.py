"""Serving signatures: one concrete function per input kind, dict outputs.

Two endpoints are exported (names are module constants, shared by the
exporter, the server and the clients):

- `serving_default`: `frames_jpeg`, a string tensor `[batch, frames]` of
  encoded JPEG/PNG frames, any number of frames (≥ 1) per clip. The graph
  takes `num_frames` of them with the evaluation sampling, then decodes,
  resizes and centre-crops them with the evaluation view the input pipeline
  uses (`selfy_tf.eval_view`), so clients may send a whole short clip, or
  `num_frames` sampled frames (~0.1 MB per clip instead of 1.2 MB of pixels).
- `predict_frames`: `frames`, uint8 `[batch, frames, height, width, 3]`, any
  number of frames and any size: sampled, resized and cropped by the same
  view. Frames already at the model's `size` x `size` are taken as already
  cropped (only sampled).

Both frame axes show as -1 in the signature metadata. Frames whose long
side is more than `MAX_FRAME_ASPECT_RATIO` times their short side are
refused (`INVALID_ARGUMENT`) before any resize.

Both return `logits`, `probabilities`, `top_k_indices`, `top_k_scores` and
`top_k_labels`; class names come from a lookup table initialised from a
`labels.txt` asset inside the SavedModel.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import keras
import tensorflow as tf

from selfy_tf import eval_view as eval_view_lib

SERVING_DEFAULT = "serving_default"
PREDICT_FRAMES = "predict_frames"
SIGNATURE_NAMES = (SERVING_DEFAULT, PREDICT_FRAMES)

JPEG_INPUT_KEY = "frames_jpeg"
FRAMES_INPUT_KEY = "frames"
SIGNATURE_INPUT_KEYS = {SERVING_DEFAULT: JPEG_INPUT_KEY, PREDICT_FRAMES: FRAMES_INPUT_KEY}
# The stream signature of causal models (`selfy export --stream`,
# `serving.stream`): one frame and the states in, logits and states out.
PREDICT_STREAM = "predict_stream"
STREAM_FRAME_INPUT_KEY = "frame"

LOGITS_KEY = "logits"
PROBABILITIES_KEY = "probabilities"
TOP_K_INDICES_KEY = "top_k_indices"
TOP_K_SCORES_KEY = "top_k_scores"
TOP_K_LABELS_KEY = "top_k_labels"
OUTPUT_KEYS = (
    LOGITS_KEY,
    PROBABILITIES_KEY,
    TOP_K_INDICES_KEY,
    TOP_K_SCORES_KEY,
    TOP_K_LABELS_KEY,
)

# Resizing the short side of a thin frame scales its long side by as much:
# a 1 x 4096 frame at a short side of 37 becomes 37 x 151,552 floats
# (67 MB). Frames longer than this many times their width or height are
# refused before any resize, which bounds a resized frame to
# `scale_size` x (this x `scale_size`).
MAX_FRAME_ASPECT_RATIO = 4


@dataclasses.dataclass(frozen=True)
class SignatureConfig:
    """Static facts the serving signatures are built from.

    Args:
        view: the evaluation view the signatures apply, one clip and one
            crop (`selfy_tf.eval_view.EvalView`); its `num_frames` and
            `crop_size` are the clip the model takes.
        top_k: how many best classes the `top_k_*` outputs hold; at most
            the number of classes.
    """

    view: eval_view_lib.EvalView
    top_k: int

    def __post_init__(self) -> None:
        if not isinstance(self.view, eval_view_lib.EvalView) or self.view.num_views != 1:
            raise ValueError(
                "`view` must be an EvalView with one clip and one crop. "
                f"Received: view={self.view!r}."
            )
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"`top_k` must be a positive integer. Received: top_k={self.top_k!r}.")

    @property
    def num_frames(self) -> int:
        """Frames per clip the model takes."""
        return self.view.num_frames

    @property
    def input_size(self) -> int:
        """Square crop side the model takes."""
        return self.view.crop_size


def make_label_table(labels_path: str) -> tf.lookup.StaticHashTable:
    """Class index (int64) → class name table read from a one-name-per-line file.

    Saved as an asset of the SavedModel; it is what makes the SavedModel
    carry a `__saved_model_init_op`.
    """
    initializer = tf.lookup.TextFileInitializer(
        labels_path,
        key_dtype=tf.int64,
        key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
        value_dtype=tf.string,
        value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
    )
    return tf.lookup.StaticHashTable(initializer, default_value="")


def _check_frame_count(frames: tf.Tensor, name: str) -> tf.Tensor:
    count = tf.shape(frames)[1]
    check = tf.debugging.assert_greater_equal(
        count, 1, message=f"`{name}` must hold at least one frame per clip"
    )
    with tf.control_dependencies([check]):
        return tf.identity(count)


def _check_aspect_ratio(frames: tf.Tensor) -> tf.Tensor:
    """`frames` `[..., height, width, 3]`, once their aspect ratio is checked."""
    shape = tf.shape(frames)
    height, width = shape[-3], shape[-2]
    check = tf.debugging.Assert(
        tf.less_equal(tf.maximum(height, width), MAX_FRAME_ASPECT_RATIO * tf.minimum(height, width)),
        [
            f"frames may be at most {MAX_FRAME_ASPECT_RATIO} times longer than wide or high; "
            "received height, width:",
            height,
            width,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(frames)


def decode_frames(frames_jpeg: tf.Tensor, config: SignatureConfig) -> tf.Tensor:
    """Samples, decodes and crops `[batch, frames]` encoded frames to model input.

    Only the `num_frames` frames chosen by the evaluation sampling are
    decoded; each is resized and centre-cropped by the evaluation view.

    Args:
        frames_jpeg: string tensor `[batch, frames]` of JPEG or PNG bytes,
            at least one frame per clip.
        config: the signature configuration (sizes).

    Returns:
        uint8 tensor `[batch, num_frames, input_size, input_size, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: at run time for bytes that are not
            a JPEG/PNG image, frames over `MAX_FRAME_ASPECT_RATIO`, or clips
            without frames.
    """
    view = config.view
    count = _check_frame_count(frames_jpeg, JPEG_INPUT_KEY)
    selected = tf.gather(frames_jpeg, view.sample_indices_tf(count)[0], axis=1)
    # Frames may differ in size: each gets the view on its own.
    frame_view = dataclasses.replace(view, num_frames=1)

    def decode_one(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = _check_aspect_ratio(image)
        return frame_view.views_from_sampled_tf(image[tf.newaxis])[0, 0]

    decoded = tf.map_fn(
        decode_one,
        tf.reshape(selected, [-1]),
        fn_output_signature=tf.TensorSpec([config.input_size, config.input_size, 3], tf.uint8),
    )
    batch_size = tf.shape(frames_jpeg)[0]
    return tf.reshape(
        decoded,
        [batch_size, config.num_frames, config.input_size, config.input_size, 3],
    )


def prepare_frames(frames: tf.Tensor, config: SignatureConfig) -> tf.Tensor:
    """Samples, resizes and crops decoded frames `[batch, frames, height, width, 3]`.

    Frames already at `input_size` x `input_size` are only sampled (they are
    taken as already cropped).

    Returns:
        uint8 tensor `[batch, num_frames, input_size, input_size, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: at run time for frames over
            `MAX_FRAME_ASPECT_RATIO` or clips without frames.
    """
    view = config.view
    size = config.input_size
    count = _check_frame_count(frames, FRAMES_INPUT_KEY)
    selected = _check_aspect_ratio(tf.gather(frames, view.sample_indices_tf(count)[0], axis=1))
    shape = tf.shape(selected)
    cropped = tf.logical_and(tf.equal(shape[2], size), tf.equal(shape[3], size))
    prepared = tf.cond(
        cropped,
        lambda: selected,
        lambda: view.views_from_sampled_tf(selected)[:, 0],
    )
    return tf.ensure_shape(prepared, [None, config.num_frames, size, size, 3])


def classification_outputs(
    logits: tf.Tensor, label_table: tf.lookup.StaticHashTable, top_k: int
) -> dict[str, tf.Tensor]:
    """The dict every signature returns, computed from `[batch, classes]` logits."""
    logits = tf.cast(logits, tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    top_k_scores, top_k_indices = tf.math.top_k(probabilities, k=top_k)
    return {
        LOGITS_KEY: logits,
        PROBABILITIES_KEY: probabilities,
        TOP_K_INDICES_KEY: top_k_indices,
        TOP_K_SCORES_KEY: top_k_scores,
        TOP_K_LABELS_KEY: label_table.lookup(tf.cast(top_k_indices, tf.int64)),
    }


def input_signatures(config: SignatureConfig) -> dict[str, list[tf.TensorSpec]]:
    """The input `TensorSpec`s of each endpoint, by signature name."""
    return {
        SERVING_DEFAULT: [tf.TensorSpec([None, None], tf.string, name=JPEG_INPUT_KEY)],
        PREDICT_FRAMES: [
            tf.TensorSpec([None, None, None, None, 3], tf.uint8, name=FRAMES_INPUT_KEY)
        ],
    }


def make_endpoint_functions(
    model: keras.Model,
    label_table: tf.lookup.StaticHashTable,
    config: SignatureConfig,
) -> dict[str, Callable[[tf.Tensor], dict[str, tf.Tensor]]]:
    """Python functions of the two endpoints, by signature name.

    Their argument names are the signature input names, which is how the
    SavedModel names its inputs.
    """

    def run_model(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(tf.cast(frames, tf.float32), training=False)
        return classification_outputs(logits, label_table, config.top_k)

    def serving_default(frames_jpeg: tf.Tensor) -> dict[str, tf.Tensor]:
        return run_model(decode_frames(frames_jpeg, config))

    def predict_frames(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return run_model(prepare_frames(frames, config))

    return {SERVING_DEFAULT: serving_default, PREDICT_FRAMES: predict_frames}
