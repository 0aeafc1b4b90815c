"""Run a converted clip classifier with LiteRT (`ai_edge_litert`), without TensorFlow or Keras.

A device needs only `ai-edge-litert` and numpy (plus PyAV to read video
files, or Pillow for frame folders). `TFLiteClassifier.predict_video` takes a
whole video and applies the model's evaluation view (frame sampling, resize,
crop; `selfy_tf.eval_view`, its NumPy form) before running the model.

Example:

```python
from serving.tflite_runtime import TFLiteClassifier

classifier = TFLiteClassifier("model.tflite", num_threads=2)
prediction = classifier.predict_video("clip.mp4")
print(classifier.labels[int(prediction["probabilities"][0].argmax())])
```
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from serving import tflite_inspect

# The converted model's one signature and its names (`serving.tflite` writes them).
SIGNATURE_KEY = "serving_default"
FRAMES_INPUT_KEY = "frames"
LOGITS_KEY = "logits"
PROBABILITIES_KEY = "probabilities"
OUTPUT_KEYS = (LOGITS_KEY, PROBABILITIES_KEY)
# Files written beside `<model>.tflite`.
LABELS_SUFFIX = ".labels.txt"
VIEW_SUFFIX = ".view.json"


def labels_path_for(model_path: str) -> str:
    """Where the class names of `model_path` are written: `<model_path>.labels.txt`."""
    return os.fspath(model_path) + LABELS_SUFFIX


def is_tflite_file(path: str | os.PathLike) -> bool:
    """True for a file holding a TFLite flatbuffer (file identifier `TFL3`), whatever its name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as handle:
        return handle.read(8)[4:8] == tflite_inspect.TFLITE_FILE_IDENTIFIER


def view_path_for(model_path: str) -> str:
    """Where the evaluation view of `model_path` is written: `<model_path>.view.json`."""
    return os.fspath(model_path) + VIEW_SUFFIX


def read_view_settings(model_path: str) -> dict[str, Any] | None:
    """The evaluation view stored beside a `.tflite` file, or None.

    Raises:
        ValueError: if the file is not a JSON object, naming it.
    """
    path = view_path_for(model_path)
    if not os.path.isfile(path):
        return None
    from selfy_tf.run_dir import parse_json_object

    with open(path, encoding="utf-8") as handle:
        return parse_json_object(handle.read(), path)


class TFLiteClassifier:
    """A converted clip classifier behind its `serving_default` signature runner.

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        num_threads: int, default 2, interpreter threads.
        labels: optional class names; default: read from
            `<path>.labels.txt` when `model` is a path and that file exists.
        view_settings: the evaluation view's resize rule
            (`{"scale_size": S}` or `{"eval_size": [H, W]}`); default: read
            from `<path>.view.json`, else the default rule.

    Attributes:
        input_shape: shape of the `frames` input, `(1, T, H, W, 3)`.
        input_dtype: numpy dtype of the `frames` input.
        num_classes: length of the `logits` output.
        labels: class names, or None.
        view_settings: the resize rule `predict_video` applies, or None.
    """

    def __init__(
        self,
        model: str | bytes | os.PathLike,
        num_threads: int = tflite_inspect.DEFAULT_NUM_THREADS,
        labels: Sequence[str] | None = None,
        view_settings: dict[str, Any] | None = None,
    ):
        from ai_edge_litert.interpreter import Interpreter

        self.model_bytes = tflite_inspect.read_model_bytes(model)
        self.num_threads = int(num_threads)
        self.interpreter = Interpreter(
            model_content=self.model_bytes, num_threads=self.num_threads
        )
        signatures = self.interpreter.get_signature_list()
        if SIGNATURE_KEY not in signatures:
            raise ValueError(
                f"The TFLite model has no `{SIGNATURE_KEY}` signature. "
                f"Received signatures: {sorted(signatures)}. Convert it with "
                "`selfy tflite`."
            )
        self.runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        detail = self.runner.get_input_details()[FRAMES_INPUT_KEY]
        self.input_shape = tuple(int(size) for size in detail["shape"])
        self.input_dtype = np.dtype(detail["dtype"])
        self.num_classes = int(self.runner.get_output_details()[LOGITS_KEY]["shape"][-1])
        is_path = not isinstance(model, (bytes, bytearray, memoryview))
        if labels is None and is_path and os.path.isfile(labels_path_for(os.fspath(model))):
            from selfy_tf.run_dir import read_labels

            labels = read_labels(labels_path_for(os.fspath(model)))
        if view_settings is None and is_path:
            view_settings = read_view_settings(os.fspath(model))
        self.labels = list(labels) if labels is not None else None
        self.view_settings = view_settings

    def eval_view(self):
        """The evaluation view (`selfy_tf.eval_view.EvalView`) `predict_video` applies."""
        from selfy_tf.eval_view import view_from_clip_shape

        return view_from_clip_shape(self.input_shape, self.view_settings)

    def predict(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Classifies one clip already at the model's input size.

        Args:
            frames: `[T, H, W, 3]` or `[1, T, H, W, 3]` RGB values 0..255
                (any numeric dtype; converted to the model's input dtype,
                rounded and clipped for uint8).

        Returns:
            `{"logits": [1, classes], "probabilities": [1, classes]}` float32.

        Raises:
            ValueError: if the clip shape differs from the model's (use
                `predict_video` for other sizes and frame counts).
        """
        frames = np.asarray(frames)
        if frames.ndim == len(self.input_shape) - 1:
            frames = frames[None]
        if tuple(frames.shape) != self.input_shape:
            raise ValueError(
                f"`frames` must have shape {self.input_shape[1:]} or "
                f"{self.input_shape}. Received: frames.shape={tuple(frames.shape)}. "
                "For a video or frames of another size or count, use `predict_video`."
            )
        if self.input_dtype == np.uint8 and frames.dtype != np.uint8:
            frames = np.clip(np.round(frames), 0, 255)
        outputs = self.runner(**{FRAMES_INPUT_KEY: frames.astype(self.input_dtype)})
        return {key: np.asarray(outputs[key], np.float32) for key in OUTPUT_KEYS}

    def predict_video(self, path_or_frames: Any) -> dict[str, np.ndarray]:
        """Classifies a whole video through the model's evaluation view.

        Args:
            path_or_frames: a video file, a folder of frame images, a `.npy`
                clip, or uint8 frames `[num_frames, height, width, 3]` of any
                count and size.

        Returns:
            `{"logits": [1, classes], "probabilities": [1, classes]}` float32.

        Raises:
            FileNotFoundError: for a missing path.
            ValueError: for frames that are not a clip, or an unreadable video.
        """
        if isinstance(path_or_frames, (str, os.PathLike)):
            from tfrecords.video import read_clip

            frames = read_clip(os.fspath(path_or_frames))
        else:
            frames = np.asarray(path_or_frames)
            if frames.dtype != np.uint8:
                raise ValueError(
                    f"`path_or_frames` frames must be uint8 (0..255). Received: dtype {frames.dtype}."
                )
        return self.predict(self.eval_view().views_numpy(frames)[0])


# The stream model's frame input (`selfy tflite --stream`); its other inputs
# are the states, returned under the same names.
STREAM_FRAME_INPUT_KEY = "frame"


class TFLiteStream:
    """A converted stream model (`selfy tflite MODEL --stream`): one frame at a time.

    Keeps the stream's states between calls: `step(frame)` returns that
    frame's logits, and `reset()` starts a new stream (zero states, as
    before a clip's first frame). For a causal model, the `T` step logits
    of a clip are the Keras model's per-frame logits (docs/streaming.md).

    Args:
        model: flatbuffer bytes or a `.tflite` path.
        num_threads: int, default 2, interpreter threads.
        labels: optional class names; default: read from
            `<path>.labels.txt` when `model` is a path and that file exists.

    Attributes:
        frame_shape: shape of the `frame` input, `(1, H, W, 3)`.
        state_shapes: `{state name: shape}`.
        num_classes: length of the `logits` output.
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
        self.interpreter = Interpreter(model_content=self.model_bytes, num_threads=int(num_threads))
        signatures = self.interpreter.get_signature_list()
        inputs = signatures.get(SIGNATURE_KEY, {}).get("inputs", [])
        if STREAM_FRAME_INPUT_KEY not in inputs:
            raise ValueError(
                f"The TFLite model is not a stream model: its `{SIGNATURE_KEY}` signature has "
                f"the inputs {sorted(inputs)}, expected `{STREAM_FRAME_INPUT_KEY}` and the "
                "states. Convert it with `selfy tflite MODEL --stream`."
            )
        self.runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
        details = self.runner.get_input_details()
        self.frame_shape = tuple(int(size) for size in details[STREAM_FRAME_INPUT_KEY]["shape"])
        self._state_details = {
            name: (tuple(int(size) for size in detail["shape"]), np.dtype(detail["dtype"]))
            for name, detail in details.items()
            if name != STREAM_FRAME_INPUT_KEY
        }
        self.state_shapes = {name: shape for name, (shape, _) in self._state_details.items()}
        self.num_classes = int(self.runner.get_output_details()[LOGITS_KEY]["shape"][-1])
        is_path = not isinstance(model, (bytes, bytearray, memoryview))
        if labels is None and is_path and os.path.isfile(labels_path_for(os.fspath(model))):
            from selfy_tf.run_dir import read_labels

            labels = read_labels(labels_path_for(os.fspath(model)))
        self.labels = list(labels) if labels is not None else None
        self.reset()

    def reset(self) -> None:
        """Starts a new stream: every state back to zeros."""
        self.states = {
            name: np.zeros(shape, dtype) for name, (shape, dtype) in self._state_details.items()
        }

    def step(self, frame: np.ndarray) -> np.ndarray:
        """Runs one frame and keeps the new states.

        Args:
            frame: `[H, W, 3]` or `[1, H, W, 3]` RGB 0..255 at the model's
                input size (any numeric dtype; rounded and clipped to uint8).

        Returns:
            float32 logits `[1, num_classes]` of this frame.

        Raises:
            ValueError: for a frame of another shape.
        """
        frame = np.asarray(frame)
        if frame.ndim == len(self.frame_shape) - 1:
            frame = frame[None]
        if tuple(frame.shape) != self.frame_shape:
            raise ValueError(
                f"`frame` must have shape {self.frame_shape[1:]} or {self.frame_shape}. "
                f"Received: frame.shape={tuple(frame.shape)}."
            )
        if frame.dtype != np.uint8:
            frame = np.clip(np.round(frame), 0, 255).astype(np.uint8)
        outputs = self.runner(**{STREAM_FRAME_INPUT_KEY: frame}, **self.states)
        self.states = {name: np.asarray(outputs[name]) for name in self._state_details}
        return np.asarray(outputs[LOGITS_KEY], np.float32)


__all__ = [
    "FRAMES_INPUT_KEY",
    "LABELS_SUFFIX",
    "OUTPUT_KEYS",
    "SIGNATURE_KEY",
    "STREAM_FRAME_INPUT_KEY",
    "TFLiteClassifier",
    "TFLiteStream",
    "VIEW_SUFFIX",
    "is_tflite_file",
    "labels_path_for",
    "read_view_settings",
    "view_path_for",
]
