"""Serving signatures: one concrete function per input kind, dict outputs.

Two endpoints are exported (names are module constants, shared by the
exporter, the server and the clients):

- `serving_default`: `frames_jpeg`, a string tensor `[batch, num_frames]` of
  encoded JPEG/PNG frames. Frames are decoded, resized and centre-cropped
  in-graph with the same eval preprocessing the input pipeline uses, so
  clients send ~0.1 MB per clip instead of 1.2 MB of pixels.
- `predict_frames`: `frames`, uint8 `[batch, num_frames, size, size, 3]`
  already at the model's input size.

Both return `logits`, `probabilities`, `top_k_indices`, `top_k_scores` and
`top_k_labels`; class names come from a lookup table initialised from a
`labels.txt` asset inside the SavedModel.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import keras
import tensorflow as tf

from tfrecords import augment


SERVING_DEFAULT = "serving_default"
PREDICT_FRAMES = "predict_frames"
SIGNATURE_NAMES = (SERVING_DEFAULT, PREDICT_FRAMES)

JPEG_INPUT_KEY = "frames_jpeg"
FRAMES_INPUT_KEY = "frames"
SIGNATURE_INPUT_KEYS = {SERVING_DEFAULT: JPEG_INPUT_KEY, PREDICT_FRAMES: FRAMES_INPUT_KEY}

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


@dataclasses.dataclass(frozen=True)
class SignatureConfig:
    """Static facts the serving signatures are built from.

    JPEG frames go through the conversion-time resize (`resize_short`: an
    aspect-preserving resize of the short side; or `eval_size`: a fixed
    `(height, width)`, as `selfy tfrecords build --size 240x320`) and then
    the eval pipeline's `tfrecords.augment.center_crop_eval`.

    Args:
        num_frames: frames per clip the model takes.
        input_size: square crop side the model takes.
        top_k: how many best classes the `top_k_*` outputs hold; at most
            the number of classes.
        resize_short: short side JPEG frames are resized to before the
            centre crop. Exclusive with `eval_size`.
        eval_size: `(height, width)` JPEG frames are resized to before the
            centre crop. Exclusive with `resize_short`.
    """

    num_frames: int
    input_size: int
    top_k: int
    resize_short: int | None = None
    eval_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for field in ("num_frames", "input_size", "top_k"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{field}` must be a positive integer. Received: {field}={value!r}."
                )
        if (self.resize_short is None) == (self.eval_size is None):
            raise ValueError(
                "Give exactly one of `resize_short` and `eval_size`. Received: "
                f"resize_short={self.resize_short}, eval_size={self.eval_size}."
            )
        smallest = self.resize_short if self.eval_size is None else min(self.eval_size)
        if smallest < self.input_size:
            raise ValueError(
                "JPEG frames must be resized to at least `input_size` so the centre "
                f"crop fits. Received: resize_short={self.resize_short}, "
                f"eval_size={self.eval_size}, input_size={self.input_size}."
            )


def default_resize_short(input_size: int) -> int:
    """Short side for a crop of `input_size`, in the eval ratio 240 : 224."""
    return int(round(input_size * 240 / 224))


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


def decode_frames(frames_jpeg: tf.Tensor, config: SignatureConfig) -> tf.Tensor:
    """Decodes `[batch, num_frames]` encoded frames to uint8 model input.

    Args:
        frames_jpeg: string tensor `[batch, num_frames]` of JPEG or PNG bytes.
        config: the signature configuration (sizes).

    Returns:
        uint8 tensor `[batch, num_frames, input_size, input_size, 3]`.

    Raises:
        tf.errors.InvalidArgumentError: at run time for bytes that are not
            a JPEG/PNG image.
    """
    flat = tf.reshape(frames_jpeg, [-1])

    def decode_one(encoded: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        if config.eval_size is None:
            image = resize_short_side(image, config.resize_short)
        return augment.center_crop_eval(image, config.input_size, config.eval_size)

    decoded = tf.map_fn(
        decode_one,
        flat,
        fn_output_signature=tf.TensorSpec(
            [config.input_size, config.input_size, 3], tf.uint8
        ),
    )
    batch_size = tf.shape(frames_jpeg)[0]
    return tf.reshape(
        decoded,
        [batch_size, config.num_frames, config.input_size, config.input_size, 3],
    )


def resize_short_side(image: tf.Tensor, short_side: int) -> tf.Tensor:
    """Aspect-preserving bilinear resize of a uint8 `[height, width, 3]` image.

    The in-graph counterpart of the converter's `--resize-short`
    (`tfrecords.video.output_size`: the short side becomes `short_side`, the
    long side is rounded).
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    scale = short_side / tf.cast(tf.minimum(height, width), tf.float64)
    new_height = tf.maximum(1, tf.cast(tf.round(tf.cast(height, tf.float64) * scale), tf.int32))
    new_width = tf.maximum(1, tf.cast(tf.round(tf.cast(width, tf.float64) * scale), tf.int32))
    new_height = tf.where(height <= width, short_side, new_height)
    new_width = tf.where(height <= width, new_width, short_side)
    resized = tf.image.resize(image, tf.stack([new_height, new_width]), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


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
    size = config.input_size
    return {
        SERVING_DEFAULT: [
            tf.TensorSpec([None, config.num_frames], tf.string, name=JPEG_INPUT_KEY)
        ],
        PREDICT_FRAMES: [
            tf.TensorSpec(
                [None, config.num_frames, size, size, 3], tf.uint8, name=FRAMES_INPUT_KEY
            )
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
        return run_model(frames)

    return {SERVING_DEFAULT: serving_default, PREDICT_FRAMES: predict_frames}


def read_labels(path: str) -> list[str]:
    """Reads one class name per line; blank lines are an error naming the line."""
    with open(path, encoding="utf-8") as handle:
        labels = [line.rstrip("\r\n") for line in handle]
    while labels and labels[-1] == "":
        labels.pop()
    for line_number, label in enumerate(labels, start=1):
        if not label.strip():
            raise ValueError(
                f"{path}:{line_number}: empty class name. Expected one class "
                "name per line, line i holding the name of class index i - 1."
            )
    if not labels:
        raise ValueError(f"{path}: no class names. Expected one class name per line.")
    return labels


def check_labels(labels: Sequence[str], num_classes: int, source: str) -> None:
    """Raises when the class names do not match the model's classes."""
    if len(labels) != num_classes:
        raise ValueError(
            f"{source} has {len(labels)} class names but the model has "
            f"{num_classes} classes. Give a labels file with one name per class."
        )
