"""Run a converted clip classifier with LiteRT (`ai_edge_litert`).

Example:

```python
import numpy as np
from serving.tflite_runtime import TFLiteClassifier

classifier = TFLiteClassifier("model.tflite", num_threads=2)
clip = np.zeros(classifier.input_shape[1:], np.uint8)  # [T, H, W, 3]
outputs = classifier.predict(clip)
print(classifier.labels[int(outputs["probabilities"][0].argmax())])
```
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np

from serving import tflite
from serving import tflite_inspect


class TFLiteClassifier:
    """A converted clip classifier behind its `serving_default` signature runner.

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        num_threads: int, default 2, interpreter threads.
        labels: optional class names; default: read from
            `<path>.labels.txt` when `model` is a path and that file exists.

    Attributes:
        input_shape: shape of the `frames` input, `(1, T, H, W, 3)`.
        input_dtype: numpy dtype of the `frames` input.
        labels: class names, or None.
    """

    def __init__(
        self,
        model: str | bytes | os.PathLike,
        num_threads: int = tflite_inspect.DEFAULT_NUM_THREADS,
        labels: Sequence[str] | None = None,
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.model_bytes = tflite_inspect.read_model_bytes(model)
        self.num_threads = int(num_threads)
        self.interpreter = Interpreter(
            model_content=self.model_bytes, num_threads=self.num_threads
        )
        signatures = self.interpreter.get_signature_list()
        if tflite.SIGNATURE_KEY not in signatures:
            raise ValueError(
                f"The TFLite model has no `{tflite.SIGNATURE_KEY}` signature. "
                f"Received signatures: {sorted(signatures)}. Convert it with "
                "`selfy tflite`."
            )
        self.runner = self.interpreter.get_signature_runner(tflite.SIGNATURE_KEY)
        detail = self.runner.get_input_details()[tflite.FRAMES_INPUT_KEY]
        self.input_shape = tuple(int(size) for size in detail["shape"])
        self.input_dtype = np.dtype(detail["dtype"])
        if labels is None and not isinstance(model, (bytes, bytearray, memoryview)):
            labels_path = tflite.labels_path_for(os.fspath(model))
            if os.path.isfile(labels_path):
                with open(labels_path, encoding="utf-8") as handle:
                    labels = [line.rstrip("\r\n") for line in handle if line.strip()]
        self.labels = list(labels) if labels is not None else None

    def predict(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Classifies one clip.

        Args:
            frames: `[T, H, W, 3]` or `[1, T, H, W, 3]` RGB values 0..255
                (any numeric dtype; converted to the model's input dtype,
                rounded and clipped for uint8).

        Returns:
            `{"logits": [1, classes], "probabilities": [1, classes]}` float32.

        Raises:
            ValueError: if the clip shape differs from the model's.
        """
        frames = np.asarray(frames)
        if frames.ndim == len(self.input_shape) - 1:
            frames = frames[None]
        if tuple(frames.shape) != self.input_shape:
            raise ValueError(
                f"`frames` must have shape {self.input_shape[1:]} or "
                f"{self.input_shape}. Received: frames.shape={tuple(frames.shape)}."
            )
        if self.input_dtype == np.uint8 and frames.dtype != np.uint8:
            frames = np.clip(np.round(frames), 0, 255)
        outputs = self.runner(**{tflite.FRAMES_INPUT_KEY: frames.astype(self.input_dtype)})
        return {key: np.asarray(outputs[key], np.float32) for key in tflite.OUTPUT_KEYS}


def compare_with_keras(
    model: keras.Model,
    classifier: TFLiteClassifier,
    clips: np.ndarray,
) -> dict[str, float]:
    """Compares TFLite and Keras logits on the same clips.

    Args:
        model: the Keras model the flatbuffer was converted from.
        classifier: the converted model.
        clips: uint8 `[num_clips, T, H, W, 3]`.

    Returns:
        `max_abs_diff` (largest logit difference), `max_abs_logit` (largest
        Keras |logit|), `relative_max_abs_diff` (their ratio) and
        `top1_agreement` (fraction of clips with the same argmax).
    """
    clips = np.asarray(clips)
    keras_logits = np.asarray(model.predict(clips.astype(np.float32), batch_size=8, verbose=0))
    tflite_logits = np.concatenate(
        [classifier.predict(clip)["logits"] for clip in clips], axis=0
    )
    max_abs_diff = float(np.max(np.abs(keras_logits - tflite_logits)))
    max_abs_logit = float(np.max(np.abs(keras_logits)))
    return {
        "max_abs_diff": max_abs_diff,
        "max_abs_logit": max_abs_logit,
        "relative_max_abs_diff": max_abs_diff / max(max_abs_logit, 1e-12),
        "top1_agreement": float(
            np.mean(keras_logits.argmax(axis=-1) == tflite_logits.argmax(axis=-1))
        ),
    }
