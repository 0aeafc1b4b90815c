"""Early recognition in `selfy demo`: validation top-1 against the frames seen.

After `k` of a clip's `T` frames (k = 1 .. T), how often is the top class
right? The two kinds of model answer differently:

- An offline clip model (TSN, TSM, SELFY) needs `T` frames. It scores a
  partial clip as the clip of the first `k` frames with the `T - k` missing
  ones filled by repeating frame `k` (the last one seen, as a camera that
  froze): the model sees nothing later than frame `k`, and at `k = T` this is
  its ordinary clip score. (Averaging its per-frame logits over the first `k`
  frames instead would let a TSM or SELFY model peek at later frames: its
  temporal shift and STSS read frames after `k`.)
- The causal model runs as a stream (`selfy_tf.streaming`): its answer
  after `k` frames is the mean of the first `k` step logits. At `k = T`
  this is exactly its clip logits (the mean of the step logits is the clip
  logits), so its last point equals its clip top-1.

The clips are the validation split as evaluation reads it (the TFRecords
through each model's evaluation view), so the offline points at `k = T` are
the accuracies of the demo's table for the models' first seed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from selfy_cli.demo.settings import DemoSettings

if TYPE_CHECKING:  # pragma: no cover
    from selfy_tf.run_dir import LoadedModel

logger = logging.getLogger(__name__)

# How the demo names the causal run of a zoo model (its row in the tables).
CAUSAL_SUFFIX = "_causal"

# The causal model and the frames a live stream delivers: consecutive ones.
CAUSAL_OVERRIDES = ["model.causal=true", "data.frame_stride=1"]

OFFLINE_SCORING = (
    "offline models: the first k frames, the missing T - k filled by repeating frame k, scored as a clip"
)
STREAM_SCORING = "causal model: the mean of its first k stream step logits"


def causal_run_name(model_name: str) -> str:
    """The demo's name for the causal run of zoo model `model_name`."""
    return f"{model_name}{CAUSAL_SUFFIX}"


def causal_run_names(settings: DemoSettings) -> list[str]:
    """The causal runs `settings` asks for (none or one)."""
    return [] if settings.causal_model is None else [causal_run_name(settings.causal_model)]


def first_k_frames_clips(clips: np.ndarray, num_seen: int) -> np.ndarray:
    """Clips that show only their first `num_seen` frames.

    Args:
        clips: `[batch, num_frames, height, width, 3]`.
        num_seen: frames kept, `1 <= num_seen <= num_frames`.

    Returns:
        A copy of `clips` in which frames `num_seen .. num_frames - 1` repeat
        frame `num_seen - 1`.

    Raises:
        ValueError: for `num_seen` outside `[1, num_frames]`.
    """
    num_frames = clips.shape[1]
    if not 1 <= num_seen <= num_frames:
        raise ValueError(f"`num_seen` must be in [1, {num_frames}]. Received: num_seen={num_seen}.")
    indices = np.minimum(np.arange(num_frames), num_seen - 1)
    return clips[:, indices]


def validation_split_clips(
    loaded: "LoadedModel", data_dir: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every validation clip as evaluation makes it for `loaded` (one centre view).

    Args:
        loaded: the model whose evaluation view makes the clips.
        data_dir: dataset directory with the `validation` split.
        batch_size: clips read per batch.

    Returns:
        uint8 frames `[clips, num_frames, height, width, 3]` and int64 labels `[clips]`.
    """
    from tfrecords import make_dataset, open_split

    split = open_split(data_dir, "validation")
    dataset = make_dataset(split.files, training=False, batch_size=batch_size, eval_view=loaded.eval_view())
    frames, labels = [], []
    for batch_frames, batch_labels in dataset:
        frames.append(batch_frames.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(frames), np.concatenate(labels).astype(np.int64)


def offline_top1_by_frames_seen(
    loaded: "LoadedModel", clips: np.ndarray, labels: np.ndarray, batch_size: int
) -> list[float]:
    """Top-1 of a clip model after `k = 1 .. T` frames (`first_k_frames_clips`).

    Args:
        loaded: the clip model (its run's STSS XLA policy applies).
        clips: uint8 `[clips, T, height, width, 3]`.
        labels: int `[clips]`.
        batch_size: clips per call (each call runs the T partial clips of a batch).

    Returns:
        Top-1 after `k = 1 .. T` frames, `T` fractions.
    """
    import tensorflow as tf

    model = loaded.model

    @tf.function
    def logits(frames):
        return tf.cast(model(frames, training=False), tf.float32)

    num_frames = clips.shape[1]
    correct = np.zeros(num_frames, np.int64)
    with loaded.stss_xla_scope():
        for start in range(0, len(clips), batch_size):
            batch, batch_labels = clips[start : start + batch_size], labels[start : start + batch_size]
            for num_seen in range(1, num_frames + 1):
                predicted = logits(first_k_frames_clips(batch, num_seen)).numpy().argmax(-1)
                correct[num_seen - 1] += int(np.sum(predicted == batch_labels))
    return (correct / len(clips)).tolist()


def stream_top1_by_frames_seen(
    loaded: "LoadedModel", clips: np.ndarray, labels: np.ndarray, batch_size: int
) -> dict[str, Any]:
    """Top-1 of a causal model run as a stream, after `k = 1 .. T` frames.

    Args:
        loaded: the causal clip model (`selfy_tf.streaming.stream_model` runs it).
        clips: uint8 `[clips, T, height, width, 3]`.
        labels: int `[clips]`.
        batch_size: streams run side by side.

    Returns:
        `top1`: per `k`, the top-1 of the running mean of the step logits;
        `clip_top1`: the causal model's top-1 on the whole clips (its clip
        logits); `max_relative_difference`: the largest difference between
        the mean of the `T` step logits and the clip logits, relative to the
        largest clip logit.
    """
    import tensorflow as tf

    from selfy_tf import streaming

    model = loaded.model
    stream = streaming.stream_model(model)
    num_frames = clips.shape[1]
    correct = np.zeros(num_frames, np.int64)
    clip_correct = 0
    largest_difference, largest_logit = 0.0, 0.0
    for start in range(0, len(clips), batch_size):
        batch, batch_labels = clips[start : start + batch_size], labels[start : start + batch_size]
        states = streaming.initial_states(stream, len(batch))
        total = np.zeros((len(batch), int(model.outputs[0].shape[-1])), np.float64)
        for index in range(num_frames):
            step_logits, states = streaming.step(stream, batch[:, index], states)
            total += step_logits
            predicted = (total / (index + 1)).argmax(-1)
            correct[index] += int(np.sum(predicted == batch_labels))
        with loaded.stss_xla_scope():
            clip_logits = tf.cast(model(batch, training=False), tf.float32).numpy()
        clip_correct += int(np.sum(clip_logits.argmax(-1) == batch_labels))
        largest_difference = max(largest_difference, float(np.abs(total / num_frames - clip_logits).max()))
        largest_logit = max(largest_logit, float(np.abs(clip_logits).max()))
    return {
        "top1": (correct / len(clips)).tolist(),
        "clip_top1": clip_correct / len(clips),
        "max_relative_difference": largest_difference / max(largest_logit, 1e-12),
    }


def measure(models: dict[str, dict], data_dir: str, settings: DemoSettings) -> dict[str, Any]:
    """The early recognition curves of the demo's models (first seed of each).

    Args:
        models: the demo's per-model summaries (`summarize_runs`), causal
            runs included.
        data_dir: the demo's dataset.
        settings: the demo's settings.

    Returns:
        The `early_recognition` entry of `results.json`: `frames_seen`
        (`[1 .. T]`), how each kind of model is scored, and per model its
        `kind` (`"offline"` or `"stream"`), `run_dir` and `top1` per `k`
        (the stream's also `clip_top1` and `max_relative_difference`).
    """
    from selfy_tf.run_dir import RunPaths, load_model

    causal_names = set(causal_run_names(settings))
    curves: dict[str, dict[str, Any]] = {}
    for name, entry in models.items():
        run_dir = entry["run_dirs"][0]
        loaded = load_model(RunPaths(run_dir).last_checkpoint)
        clips, labels = validation_split_clips(loaded, data_dir, settings.batch_size)
        if name in causal_names:
            curve = {"kind": "stream", **stream_top1_by_frames_seen(loaded, clips, labels, settings.batch_size)}
        else:
            curve = {"kind": "offline", "top1": offline_top1_by_frames_seen(loaded, clips, labels, settings.batch_size)}
        curves[name] = {"run_dir": run_dir, **curve}
        logger.info(
            "early recognition, %s: top-1 %s after 1 .. %d frames",
            name, " ".join(f"{100 * value:.0f}" for value in curve["top1"]), len(curve["top1"]),
        )
    return {
        "frames_seen": list(range(1, settings.num_frames + 1)),
        "scoring": {"offline": OFFLINE_SCORING, "stream": STREAM_SCORING},
        "seed": settings.seeds[0],
        "models": curves,
    }
