"""Decoding serialised clip SequenceExamples into raw tensors (no randomness)."""

from __future__ import annotations

import tensorflow as tf

from tfrecords import features

ENCODED_FRAMES = "encoded_frames"
LABEL = "label"
LABEL_TEXT = "label_text"
MEDIA_ID = "media_id"


class Decoder:
    """Turns a serialised SequenceExample into a dict of raw tensors.

    JPEG frames stay encoded (the parser decodes only the frames it keeps).
    Reads the keys of `tfrecords.features` by default, which are also those
    written by TF Model Garden's video tools; pass `feature_keys` for others.

    Args:
        feature_keys: `tfrecords.features.FeatureKeys`, a dict of overrides, or None.

    Example:
        >>> decoded = Decoder().decode(tf.constant(encode_clip(frames, 3)))
        >>> decoded["encoded_frames"].shape, int(decoded["label"])
        (TensorShape([4]), 3)

    The decoded dict holds `encoded_frames` (string `[num_available_frames]`),
    `label` (int32 scalar; the first value when a record has several),
    `label_text` and `media_id` (string scalars, empty when absent).
    """

    def __init__(self, feature_keys: "features.FeatureKeys | dict | None" = None) -> None:
        self.feature_keys = features.FeatureKeys.from_any(feature_keys)
        keys = self.feature_keys
        self._context_features = {
            keys.label_index: tf.io.VarLenFeature(tf.int64),
            keys.label_text: tf.io.FixedLenFeature([], tf.string, default_value=""),
            keys.media_id: tf.io.FixedLenFeature([], tf.string, default_value=""),
        }
        self._sequence_features = {keys.image: tf.io.FixedLenSequenceFeature([], tf.string)}

    def decode(self, serialized) -> dict[str, tf.Tensor]:
        """Decodes one serialised record (string scalar)."""
        keys = self.feature_keys
        context, sequences = tf.io.parse_single_sequence_example(
            serialized,
            context_features=self._context_features,
            sequence_features=self._sequence_features,
        )
        labels = context[keys.label_index].values
        check = tf.debugging.assert_positive(
            tf.size(labels), message=f"a record has no label `{keys.label_index}`"
        )
        encoded = sequences[keys.image]
        check_frames = tf.debugging.assert_positive(
            tf.size(encoded), message=f"a record has no frame `{keys.image}`"
        )
        with tf.control_dependencies([check, check_frames]):
            return {
                ENCODED_FRAMES: tf.identity(encoded),
                LABEL: tf.cast(labels[0], tf.int32),
                LABEL_TEXT: context[keys.label_text],
                MEDIA_ID: context[keys.media_id],
            }
