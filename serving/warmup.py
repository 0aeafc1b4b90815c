"""Warm-up requests stored with a SavedModel (`assets.extra/tf_serving_warmup_requests`).

TF Serving replays these `PredictionLog` records when it loads a version, so
the first real request does not pay for graph initialisation. The local
server replays them too (`read_warmup_requests`).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from serving import signatures as signatures_lib
from tfrecords.features import encode_frames

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"


def warmup_path(saved_model_dir: str) -> str:
    """Where the warm-up records of the SavedModel at `saved_model_dir` live."""
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILE)


def make_warmup_requests(
    name: str, config: signatures_lib.SignatureConfig
) -> list[prediction_log_pb2.PredictionLog]:
    """One `PredictionLog` per signature, with a batch of one synthetic clip.

    The JPEG request holds landscape frames of the size the signatures'
    evaluation view resizes a 4:3 frame to, so decoding and cropping run
    as for a typical request.
    """
    rng = np.random.default_rng(0)
    height, width = config.view.resize_target(3, 4)
    clip = rng.integers(0, 256, (config.num_frames, height, width, 3), dtype=np.uint8)
    frames_jpeg = np.array([encode_frames(clip)], dtype=object)
    size = config.input_size
    frames = rng.integers(0, 256, (1, config.num_frames, size, size, 3), dtype=np.uint8)
    inputs = {
        signatures_lib.SERVING_DEFAULT: (signatures_lib.JPEG_INPUT_KEY, frames_jpeg),
        signatures_lib.PREDICT_FRAMES: (signatures_lib.FRAMES_INPUT_KEY, frames),
    }
    logs = []
    for signature_name, (input_key, value) in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature_name
        request.inputs[input_key].CopyFrom(tf.make_tensor_proto(value))
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        logs.append(log)
    return logs


def write_warmup_requests(
    saved_model_dir: str, *, name: str, config: signatures_lib.SignatureConfig
) -> str:
    """Writes the warm-up records into `saved_model_dir`; returns their path."""
    path = warmup_path(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in make_warmup_requests(name, config):
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str) -> list[prediction_log_pb2.PredictionLog]:
    """Parses the warm-up records of a SavedModel; an empty list when it has none.

    Raises:
        ValueError: if a record is not a `PredictionLog`, naming the record.
    """
    path = warmup_path(saved_model_dir)
    if not os.path.isfile(path):
        return []
    logs = []
    for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception as error:  # protobuf raises its own DecodeError
            raise ValueError(f"{path}: record {index} is not a PredictionLog: {error}") from error
        logs.append(log)
    return logs
