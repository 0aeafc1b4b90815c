"""What a model sees in one clip: STSS maps, motion field and Grad-CAM, as files.

`visualize_clip` is the work behind `selfy viz`: it runs a model on a clip
and writes

- `stss_query.png`: the `U x V` similarity maps of a query point for every
  temporal offset, above the frames they compare with;
- `motion_field.png` and `motion_field.gif`: soft-argmax displacements of
  the STSS per temporal offset, as arrows over the frames;
- `gradcam.png` and `gradcam.gif`: Grad-CAM of the predicted class per frame;
- `prediction.json`: the top classes and where each file is.

Example:

>>> from selfy_tf.run_dir import load_model
>>> from tfrecords.video import read_clip
>>> loaded = load_model("runs/selfy")
>>> frames = loaded.eval_view().views_numpy(read_clip("video.mp4"))[0]
>>> visualize_clip(loaded.model, frames, "viz_out", loaded.labels)["top_k"][0]["label"]
'move_left'
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

import keras
import numpy as np

from selfy_tf.files import atomic_write_json
from selfy_tf.viz import gradcam as gradcam_lib
from selfy_tf.viz import motion_field as motion_field_lib
from selfy_tf.viz import plots, stss_maps

logger = logging.getLogger(__name__)


def _default_query(similarity: np.ndarray, field: motion_field_lib.MotionField) -> tuple[int, int, int]:
    """The middle frame's cell where a moved match most beats standing still."""
    num_frames = similarity.shape[1]
    frame_index = num_frames // 2
    gain = np.nanmean(field.motion_gain[0, frame_index], axis=-1)
    row, column = np.unravel_index(int(np.nanargmax(gain)), gain.shape)
    return frame_index, int(row), int(column)


def visualize_clip(
    model: keras.Model,
    frames: np.ndarray,
    out_dir: str,
    labels: Sequence[str] | None = None,
    query: tuple[int, int, int] | None = None,
    temperature: float = 0.05,
    top_k: int = 3,
    prefix: str = "",
    gif: bool = True,
) -> dict:
    """Writes STSS maps, the motion field and Grad-CAM of a clip.

    Args:
        model: functional video classifier (frames 0..255 in, logits out).
        frames: uint8 `[num_frames, input_size, input_size, 3]`.
        out_dir: folder for the outputs (created).
        labels: class names (default: `class_<index>`).
        query: `(frame_index, row, column)` in STSS cells; default: the
            middle frame's cell with the largest motion.
        temperature: soft-argmax temperature.
        top_k: classes listed in the prediction.
        prefix: prefix of every file name (to put several clips in one folder).
        gif: also write animated GIFs.

    Returns:
        The `prediction.json` content: `top_k` (label, probability), `query`,
        `stss_source`, and `files` (name -> path).
    """
    frames = np.asarray(frames)
    os.makedirs(out_dir, exist_ok=True)

    def out(name: str) -> str:
        return os.path.join(out_dir, f"{prefix}{name}")

    cam = gradcam_lib.grad_cam(model, frames)
    top, predicted = _top_classes(cam.probabilities, cam.class_index, labels, top_k)
    model_similarity = stss_maps.model_stss(model, frames)
    field = motion_field_lib.motion_field_from_stss(model_similarity.similarity, temperature=temperature)
    if query is None:
        query = _default_query(model_similarity.similarity, field)
    files = _plot_figures(frames, cam, model_similarity, field, query, predicted, temperature, out)
    if gif:
        files.update(_write_gifs(frames, cam, field, model_similarity.stride, out))
    result = {
        "top_k": top,
        "predicted": predicted,
        "query": list(query),
        "stss_source": model_similarity.source,
        "stss_shape": list(model_similarity.similarity.shape),
        "gradcam_layer": cam.layer_name,
        "files": files,
    }
    prediction_path = out("prediction.json")
    atomic_write_json(prediction_path, result)
    files["prediction"] = prediction_path
    return result


def _top_classes(
    probabilities: np.ndarray, class_index: int, labels: Sequence[str] | None, top_k: int
) -> tuple[list[dict], str]:
    """The `top_k` classes (label, index, probability) and the predicted class's name."""
    num_classes = len(probabilities)
    names = list(labels) if labels is not None else [f"class_{index}" for index in range(num_classes)]
    if len(names) != num_classes:
        logger.warning(
            "%d labels for a model with %d classes; using class indices.", len(names), num_classes
        )
        names = [f"class_{index}" for index in range(num_classes)]
    order = np.argsort(-probabilities)[: max(1, top_k)]
    top = [{"label": names[index], "index": int(index), "probability": float(probabilities[index])} for index in order]
    return top, names[class_index]


def _plot_figures(
    frames: np.ndarray,
    cam: gradcam_lib.GradCAMResult,
    model_similarity: stss_maps.ModelSTSS,
    field: motion_field_lib.MotionField,
    query: tuple[int, int, int],
    predicted: str,
    temperature: float,
    out: Callable[[str], str],
) -> dict[str, str]:
    """Writes `stss_query.png`, `motion_field.png` and `gradcam.png`; returns their paths."""
    stride = model_similarity.stride
    maps = stss_maps.query_maps(model_similarity.similarity, *query)
    files = {}
    files["stss_query"] = plots.plot_stss_query(
        maps,
        out("stss_query.png"),
        frames=frames,
        query=query,
        stride=stride,
        temperature=temperature,
        title=f"STSS of query (t={query[0]}, row={query[1]}, col={query[2]}) — {model_similarity.source}",
    )
    files["motion_field"] = plots.plot_motion_field(
        frames, field, out("motion_field.png"), stride=stride,
        title=f"soft-argmax motion per temporal offset — {model_similarity.source}",
    )
    files["gradcam"] = plots.plot_gradcam(
        frames, cam.maps, out("gradcam.png"),
        title=f"Grad-CAM for '{predicted}' ({cam.probabilities[cam.class_index]:.0%}), layer {cam.layer_name}",
    )
    return files


def _write_gifs(
    frames: np.ndarray,
    cam: gradcam_lib.GradCAMResult,
    field: motion_field_lib.MotionField,
    stride: int,
    out: Callable[[str], str],
) -> dict[str, str]:
    """Writes `motion_field.gif` (arrows over each frame) and `gradcam.gif`; returns their paths."""
    height, width = field.velocity.shape[2:4]
    grid_y, grid_x = np.meshgrid(
        (np.arange(height) + 0.5) * stride - 0.5, (np.arange(width) + 0.5) * stride - 0.5, indexing="ij"
    )
    origins = np.stack([grid_y.ravel(), grid_x.ravel()], -1)
    motion_images = [
        plots.draw_arrows(frame, origins, field.velocity[0, index].reshape(-1, 2) * stride)
        for index, frame in enumerate(frames)
    ]
    files = {"motion_field_gif": plots.save_gif(motion_images, out("motion_field.gif"))}
    cam_images = [
        plots.heatmap_overlay(frame, cam.maps[index]) for index, frame in enumerate(frames)
    ]
    scale = max(1, 256 // frames.shape[1])
    cam_images = [np.kron(image, np.ones((scale, scale, 1), np.uint8)) for image in cam_images]
    files["gradcam_gif"] = plots.save_gif(cam_images, out("gradcam.gif"))
    return files
