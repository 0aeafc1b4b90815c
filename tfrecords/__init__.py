"""Video clips as TFRecord SequenceExamples: dataset conversion and tf.data input.

    from tfrecords import make_dataset, write_split, read_labels

Names are imported on first use, so conversion worker processes that only
need `tfrecords.video` / `tfrecords.sources` never import TensorFlow.
"""

from __future__ import annotations

from selfy_tf._lazy import lazy_exports

_EXPORTS = {
    "make_dataset": "tfrecords.dataset",
    "match_files": "tfrecords.dataset",
    "write_split": "tfrecords.writer",
    "read_labels": "selfy_tf.run_dir",
    "open_split": "tfrecords.split",
    "Split": "tfrecords.split",
    "convert_split": "tfrecords.writer",
    "encode_clip": "tfrecords.features",
    "FeatureKeys": "tfrecords.features",
    "IMAGE_KEY": "tfrecords.features",
    "LABEL_INDEX_KEY": "tfrecords.features",
    "LABEL_TEXT_KEY": "tfrecords.features",
    "MEDIA_ID_KEY": "tfrecords.features",
    "Decoder": "tfrecords.decoder",
    "Parser": "tfrecords.parser",
    "EvalView": "selfy_tf.eval_view",
    "sample_train_indices": "selfy_tf.sampling",
    "sample_eval_indices": "selfy_tf.sampling",
    "read_video_frames": "tfrecords.video",
    "inspect_dataset": "tfrecords.inspect",
    "write_synthetic_motion": "tfrecords.synthetic",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports("tfrecords", _EXPORTS, globals())
