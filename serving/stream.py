"""Streaming endpoints: the stream model of a causal classifier in a SavedModel and in LiteRT.

TF Serving and LiteRT keep no state between calls, so the stream's state
travels with each request (as MoViNet-Stream does): the endpoint takes one
frame and the states, and returns the frame's logits and the new states
(`selfy_tf.streaming`). The client keeps them (`serving.client.StreamSessions`,
`serving.tflite_runtime.TFLiteStream`).

- SavedModel: `selfy export RUN --stream` adds the signature
  `STREAM_SIGNATURE` (`predict_stream`): inputs `frame` (uint8
  `[batch, size, size, 3]`, already at the model's input size) and one
  input per state (`[batch, ...]`, named as in `state_specs`); outputs
  `logits`, `probabilities` and the new states under the same names.
- LiteRT: `selfy tflite MODEL --stream` writes a flatbuffer whose
  `serving_default` signature has the same inputs and outputs at batch 1.

Example:

```python
from selfy_tf.models import create_model
from serving import stream

model = create_model("selfy_tsm_r18.tiny", num_classes=5, causal=True)
model_bytes = stream.convert_stream_model(model)
```
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable, Iterable, Iterator

import keras
import numpy as np
import tensorflow as tf

from selfy_tf import streaming
from serving import signatures as signatures_lib
from serving import tflite as tflite_lib
from serving import tflite_runtime

STREAM_SIGNATURE = signatures_lib.PREDICT_STREAM
FRAME_INPUT_KEY = signatures_lib.STREAM_FRAME_INPUT_KEY
LOGITS_KEY = signatures_lib.LOGITS_KEY
PROBABILITIES_KEY = signatures_lib.PROBABILITIES_KEY
if (FRAME_INPUT_KEY, LOGITS_KEY) != (streaming.FRAME_KEY, streaming.LOGITS_KEY):
    raise ImportError("serving.signatures and selfy_tf.streaming disagree on the stream's names")


def stream_input_signature(stream: keras.Model, batch_size: int | None = None) -> dict[str, tf.TensorSpec]:
    """The endpoint's inputs: the frame and each state, by name."""
    height, width, channels = stream.input[FRAME_INPUT_KEY].shape[1:]
    specs = {
        FRAME_INPUT_KEY: tf.TensorSpec([batch_size, height, width, channels], tf.uint8, name=FRAME_INPUT_KEY)
    }
    for name, (shape, dtype) in streaming.state_specs(stream).items():
        specs[name] = tf.TensorSpec([batch_size, *shape], tf.as_dtype(dtype), name=name)
    return specs


def stream_function(stream: keras.Model) -> Callable[[dict], dict]:
    """`inputs -> outputs` of the endpoint, for `stream_input_signature`'s dict."""

    def run(inputs: dict) -> dict:
        outputs = dict(stream(inputs, training=False))
        logits = tf.cast(outputs.pop(LOGITS_KEY), tf.float32)
        return {LOGITS_KEY: logits, PROBABILITIES_KEY: tf.nn.softmax(logits, axis=-1), **outputs}

    return run


def add_stream_endpoint(archive: keras.export.ExportArchive, model: keras.Model) -> keras.Model:
    """Adds `STREAM_SIGNATURE` for the stream model of `model` to `archive`.

    Returns:
        The stream model (tracked by the archive).

    Raises:
        ValueError: if `model` is not causal (see `selfy_tf.streaming.stream_model`).
    """
    stream = streaming.stream_model(model)
    archive.track(stream)
    archive.add_endpoint(STREAM_SIGNATURE, stream_function(stream), [stream_input_signature(stream)])
    return stream


def stream_calibration(
    stream: keras.Model, clips: Iterable[np.ndarray]
) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """A representative dataset for int8 streams: each frame of each clip with
    the states the Keras stream reached before it.

    Args:
        stream: the Keras stream model.
        clips: uint8 clips `[1, T, H, W, 3]` (or `[T, H, W, 3]`).
    """
    clips = [np.asarray(clip).reshape(-1, *np.asarray(clip).shape[-3:]) for clip in clips]

    def dataset() -> Iterator[dict[str, np.ndarray]]:
        for clip in clips:
            states = streaming.initial_states(stream, 1)
            for frame in clip:
                frame = frame[None].astype(np.uint8)
                yield {FRAME_INPUT_KEY: frame, **states}
                _, states = streaming.step(stream, frame, states)

    return dataset


def convert_stream_model(
    model: keras.Model,
    quantize: str = "none",
    calibration_clips: Iterable[np.ndarray] | None = None,
) -> bytes:
    """Converts the stream model of a causal classifier to a LiteRT flatbuffer.

    Args:
        model: a causal clip classifier (`create_model(..., causal=True)`);
            one trained with mixed precision is converted in float32.
        quantize: one of `serving.tflite.QUANTIZE_MODES`.
        calibration_clips: uint8 clips `[1, T, H, W, 3]` for `"int8"`
            (required there): their frames and the states the stream reaches
            calibrate the activation ranges.

    Returns:
        The flatbuffer bytes: signature `serving_default` with inputs `frame`
        `[1, H, W, 3]` uint8 and the states, outputs `logits`,
        `probabilities` and the new states.

    Raises:
        ValueError: for a model that is not causal, a bad `quantize`, int8
            without calibration clips, or a conversion that fails.
    """
    tflite_lib.check_quantize(quantize)
    if quantize == "int8" and calibration_clips is None:
        raise ValueError(
            "`quantize='int8'` needs calibration clips (`--calibration-data DIR`). "
            "Received: none. Or use quantize='dynamic' (int8 weights, no calibration)."
        )
    model = tflite_lib.float32_model(model)
    stream = streaming.stream_model(model)
    representative = None if calibration_clips is None else stream_calibration(stream, calibration_clips)
    directory = tempfile.mkdtemp(prefix="selfy_tflite_stream_")
    try:
        # The stream's STSS step is one code path whatever the layers' backend.
        with tflite_lib.export_settings(model, tflite_lib.CONVERTIBLE_STSS_BACKEND):
            function = tf.function(
                stream_function(stream),
                input_signature=[stream_input_signature(stream, batch_size=1)],
                autograph=False,
            )
            archive = keras.export.ExportArchive()
            archive.track(stream)
            archive.add_endpoint(tflite_runtime.SIGNATURE_KEY, function)
            archive.write_out(os.path.join(directory, "saved_model"), verbose=False)
        return tflite_lib.convert_saved_model(
            os.path.join(directory, "saved_model"),
            quantize,
            representative if quantize == "int8" else None,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def compare_stream_with_keras(
    model: keras.Model, tflite_stream: "tflite_runtime.TFLiteStream", clips: np.ndarray
) -> dict[str, float]:
    """Compares the LiteRT stream's step logits with the Keras model's per-frame logits.

    Args:
        model: the causal Keras model the stream was converted from.
        tflite_stream: the converted stream (reset before each clip).
        clips: uint8 `[num_clips, T, H, W, 3]`.

    Returns:
        `max_abs_diff`, `max_abs_logit` (largest Keras |logit|),
        `relative_max_abs_diff` and `top1_agreement` over all frames.
    """
    clips = np.asarray(clips)
    keras_stream = streaming.stream_model(model)
    keras_logits, tflite_logits = [], []
    for clip in clips:
        states = streaming.initial_states(keras_stream, 1)
        tflite_stream.reset()
        for frame in clip:
            logits, states = streaming.step(keras_stream, frame[None], states)
            keras_logits.append(logits)
            tflite_logits.append(tflite_stream.step(frame))
    keras_logits, tflite_logits = np.concatenate(keras_logits), np.concatenate(tflite_logits)
    max_abs_diff = float(np.max(np.abs(keras_logits - tflite_logits)))
    max_abs_logit = float(np.max(np.abs(keras_logits)))
    return {
        "max_abs_diff": max_abs_diff,
        "max_abs_logit": max_abs_logit,
        "relative_max_abs_diff": max_abs_diff / max(max_abs_logit, 1e-12),
        "top1_agreement": float(np.mean(keras_logits.argmax(-1) == tflite_logits.argmax(-1))),
    }


__all__ = [
    "compare_stream_with_keras",
    "FRAME_INPUT_KEY",
    "LOGITS_KEY",
    "PROBABILITIES_KEY",
    "STREAM_SIGNATURE",
    "add_stream_endpoint",
    "convert_stream_model",
    "stream_calibration",
    "stream_function",
    "stream_input_signature",
]
