"""Video clips as TFRecord SequenceExamples: dataset conversion and tf.data input.

    from tfrecords import make_dataset, write_split, read_labels

Names are imported on first use, so conversion worker processes that only
need `tfrecords.video` / `tfrecords.sources` never import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "make_dataset": "tfrecords.dataset",
    "match_files": "tfrecords.dataset",
    "write_split": "tfrecords.writer",
    "read_labels": "tfrecords.writer",
    "convert_split": "tfrecords.writer",
    "encode_clip": "tfrecords.features",
    "FeatureKeys": "tfrecords.features",
    "IMAGE_KEY": "tfrecords.features",
    "LABEL_INDEX_KEY": "tfrecords.features",
    "LABEL_TEXT_KEY": "tfrecords.features",
    "MEDIA_ID_KEY": "tfrecords.features",
    "Decoder": "tfrecords.decoder",
    "Parser": "tfrecords.parser",
    "center_crop_eval": "tfrecords.augment",
    "sample_train_indices": "tfrecords.sampling",
    "sample_eval_indices": "tfrecords.sampling",
    "read_video_frames": "tfrecords.video",
    "inspect_dataset": "tfrecords.inspect",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfrecords' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
