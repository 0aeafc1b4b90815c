"""`selfy predict VIDEO --stream`: a causal model's answer after every frame, as a timeline.

The video's frames go one by one, in order, through the stream of a causal
model (docs/streaming.md): a run directory or `.keras` file (Keras, in this
process), a `.tflite` stream (`selfy tflite --stream`), an exported
SavedModel or a server (their `predict_stream` signature, `selfy export
--stream`). Each frame is resized and centre-cropped as the model's
evaluation view does. One line per frame: time in seconds, top class and its
probability averaged over the last `--smooth` frames.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import deque
from typing import Callable

import numpy as np

# The name of the one stream a `selfy predict` run sends to a server.
_STREAM_ID = "video"


def _frame_rate(path: str, default: float) -> float:
    """The video's frame rate from its container, or `default` (frame folders, .npy)."""
    if os.path.isdir(path) or path.endswith(".npy"):
        return default
    import av

    with av.open(path) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else default


def _stepper(args: argparse.Namespace, num_frames: int) -> tuple[Callable, object, list[str] | None]:
    """`(step(frame) -> logits, evaluation view of all frames, labels)` of the chosen model."""
    from selfy_tf.eval_view import view_from_clip_shape
    from serving import tflite_runtime

    if args.server is None and tflite_runtime.is_tflite_file(args.model):
        runtime = tflite_runtime.TFLiteStream(args.model)
        _, height, width, _ = runtime.frame_shape
        settings = tflite_runtime.read_view_settings(args.model)
        view = view_from_clip_shape((num_frames, height, width), settings)
        return runtime.step, view, runtime.labels
    target, labels, settings = args.server, None, None
    if target is None:
        from selfy_tf.run_dir import load_model

        loaded = load_model(args.model, allow_saved_model=True)
        labels, settings = loaded.labels, loaded.view_settings
        if not loaded.is_saved_model:
            from selfy_tf import streaming

            stream = streaming.stream_model(loaded.model)
            states = [streaming.initial_states(stream, 1)]

            def keras_step(frame: np.ndarray) -> np.ndarray:
                logits, states[0] = streaming.step(stream, frame[None], states[0])
                return logits

            _, _, height, width, _ = loaded.model.inputs[0].shape
            return keras_step, view_from_clip_shape((num_frames, height, width), settings), labels
        target = loaded.model_path
    from serving.client import StreamSessions, make_client

    sessions = StreamSessions(make_client(target, model=args.name))
    height, width, _ = sessions.frame_shape
    view = view_from_clip_shape((num_frames, height, width), settings)
    return (lambda frame: sessions.step(_STREAM_ID, frame)), view, labels


def predict_stream(args: argparse.Namespace) -> int:
    """Prints the timeline of `args.video` (see the module docstring)."""
    from tfrecords.video import read_clip

    if args.smooth < 1:
        raise ValueError(f"`--smooth` must be at least 1 frame. Received: --smooth={args.smooth}.")
    frames = read_clip(args.video)
    step, view, labels = _stepper(args, frames.shape[0])
    prepared = view.views_numpy(frames)[0]
    fps = args.fps or _frame_rate(args.video, 25.0)
    window: deque[np.ndarray] = deque(maxlen=args.smooth)
    timeline = []
    for index, frame in enumerate(prepared):
        logits = np.asarray(step(frame), np.float64)[0]
        probabilities = np.exp(logits - logits.max())
        window.append(probabilities / probabilities.sum())
        smoothed = np.mean(window, axis=0)
        top = int(smoothed.argmax())
        label = labels[top] if labels else f"class {top}"
        timeline.append({"time_s": index / fps, "label": label, "index": top, "score": float(smoothed[top])})
    if args.json:
        print(json.dumps({"video": args.video, "fps": fps, "smooth": args.smooth, "timeline": timeline}))
    else:
        for entry in timeline:
            print(f"{entry['time_s']:.2f}\t{entry['label']}\t{entry['score']:.4f}")
    return 0
