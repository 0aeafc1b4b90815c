"""Feature keys of a clip SequenceExample and clip encoding.

A clip is one `tf.train.SequenceExample` (the TF Model Garden / DMVR layout):

- context `clip/label/index` (int64): the class index, line `index` of
  `labels.txt`;
- context `clip/label/text` (bytes): the class name;
- context `clip/media_id` (bytes): where the clip came from (video id or path);
- feature list `image/encoded`: one JPEG (bytes) per frame, in time order.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np

IMAGE_KEY = "image/encoded"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
MEDIA_ID_KEY = "clip/media_id"

DEFAULT_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class FeatureKeys:
    """Names of the features a clip reader looks for.

    The defaults are the keys written by this package and by TF Model Garden's
    video tools; change them to read SequenceExamples written with other keys.

    Args:
        image: feature-list key of the JPEG-encoded frames.
        label_index: context key of the int64 class index.
        label_text: context key of the class name (optional in the records).
        media_id: context key of the clip identifier (optional in the records).
    """

    image: str = IMAGE_KEY
    label_index: str = LABEL_INDEX_KEY
    label_text: str = LABEL_TEXT_KEY
    media_id: str = MEDIA_ID_KEY

    @classmethod
    def from_any(cls, feature_keys: "FeatureKeys | dict | None") -> "FeatureKeys":
        """Returns `FeatureKeys` from `None` (defaults), a dict of overrides or itself."""
        if feature_keys is None:
            return cls()
        if isinstance(feature_keys, cls):
            return feature_keys
        if isinstance(feature_keys, dict):
            names = {field.name for field in dataclasses.fields(cls)}
            unknown = sorted(set(feature_keys) - names)
            if unknown:
                raise ValueError(
                    f"`feature_keys` has unknown entries {unknown}. "
                    f"Expected a subset of {sorted(names)}."
                )
            return cls(**feature_keys)
        raise TypeError(
            "`feature_keys` must be None, a dict or a FeatureKeys. "
            f"Received: {type(feature_keys).__name__}."
        )


def encode_jpeg(frame: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Encodes one RGB frame `uint8 [height, width, 3]` as JPEG bytes (Pillow)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def encode_frames(
    frames: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY
) -> list[bytes]:
    """Encodes `uint8 [num_frames, height, width, 3]` frames as a list of JPEGs.

    Raises:
        ValueError: if `frames` is not a non-empty uint8 array of RGB frames.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            "`frames` must be uint8 [num_frames, height, width, 3]. "
            f"Received: dtype={frames.dtype}, shape={tuple(frames.shape)}."
        )
    if frames.shape[0] == 0:
        raise ValueError(
            f"`frames` must hold at least one frame. Received: shape={tuple(frames.shape)}."
        )
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"`jpeg_quality` must be in [1, 100]. Received: {quality}.")
    return [encode_jpeg(frame, quality) for frame in frames]


def encode_clip(
    frames: "np.ndarray | Sequence[bytes]",
    label_index: int,
    label_text: str = "",
    media_id: str = "",
    *,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    feature_keys: "FeatureKeys | dict | None" = None,
) -> bytes:
    """Serialises one clip as a `tf.train.SequenceExample`.

    Args:
        frames: `uint8 [num_frames, height, width, 3]` RGB frames, or a
            sequence of already JPEG-encoded frames (bytes).
        label_index: class index (line of `labels.txt`).
        label_text: class name.
        media_id: clip identifier (video id, path).
        jpeg_quality: JPEG quality for raw frames (ignored for encoded ones).
        feature_keys: feature names to write (default: the module constants).

    Returns:
        The serialised SequenceExample (bytes).

    Raises:
        ValueError: if `frames` is empty or not uint8 RGB frames.
    """
    import tensorflow as tf

    keys = FeatureKeys.from_any(feature_keys)
    if isinstance(frames, np.ndarray):
        encoded = encode_frames(frames, jpeg_quality)
    else:
        encoded = [bytes(frame) for frame in frames]
        if not encoded:
            raise ValueError("`frames` must hold at least one encoded frame. Received: [].")
    example = tf.train.SequenceExample()
    context = example.context.feature
    context[keys.label_index].int64_list.value.append(int(label_index))
    context[keys.label_text].bytes_list.value.append(str(label_text).encode("utf-8"))
    context[keys.media_id].bytes_list.value.append(str(media_id).encode("utf-8"))
    frame_list = example.feature_lists.feature_list[keys.image]
    for data in encoded:
        frame_list.feature.add().bytes_list.value.append(data)
    return example.SerializeToString()
