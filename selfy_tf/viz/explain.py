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

>>> model, labels = load_model_or_run("runs/selfy")
>>> frames = load_clip("video.mp4", num_frames=8, input_size=64)
>>> visualize_clip(model, frames, "viz_out", labels)["top_k"][0]["label"]
'move_left'
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Sequence

import keras
import numpy as np

from selfy_tf.files import atomic_write_json
from selfy_tf.viz import gradcam as gradcam_lib
from selfy_tf.viz import motion_field as motion_field_lib
from selfy_tf.viz import plots
from selfy_tf.viz import stss_maps

logger = logging.getLogger(__name__)

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def load_model_or_run(path: str) -> tuple[keras.Model, list[str] | None]:
    """Loads a `.keras` model file or the best checkpoint of a training run.

    Args:
        path: a `.keras` file, or a run directory holding
            `checkpoints/best.keras` (or `checkpoints/last.keras`) and
            `labels.txt`.

    Returns:
        `(model, labels)`; labels is None when no `labels.txt` is found next
        to the model.

    Raises:
        FileNotFoundError: if no model file is found at `path`.
    """
    import selfy_tf.layers  # noqa: F401  (registers the custom layers)
    import selfy_tf.models  # noqa: F401

    try:
        # Checkpoints written by the trainer may name its optimizer and schedules.
        import trainer.optimizer  # noqa: F401
        import trainer.schedules  # noqa: F401
    except ImportError:  # pragma: no cover - trainer ships with the package
        pass

    path = os.fspath(path)
    labels_candidates = []
    if os.path.isdir(path):
        model_file = None
        for name in ("best.keras", "last.keras"):
            candidate = os.path.join(path, "checkpoints", name)
            if os.path.isfile(candidate):
                model_file = candidate
                break
        if model_file is None:
            found = sorted(glob.glob(os.path.join(path, "*.keras")))
            model_file = found[0] if found else None
        if model_file is None:
            raise FileNotFoundError(
                f"No model in {path!r}: expected a run directory with "
                "checkpoints/best.keras or a .keras file."
            )
        labels_candidates.append(os.path.join(path, "labels.txt"))
    elif os.path.isfile(path):
        model_file = path
        labels_candidates.append(os.path.join(os.path.dirname(os.path.abspath(path)), "labels.txt"))
        labels_candidates.append(
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "labels.txt")
        )
    else:
        raise FileNotFoundError(
            f"Model not found: {path!r}. Pass a .keras file or a training run directory."
        )
    model = keras.saving.load_model(model_file, compile=False)
    labels = None
    for candidate in labels_candidates:
        if os.path.isfile(candidate):
            with open(candidate, encoding="utf-8") as handle:
                labels = [line.strip() for line in handle if line.strip()]
            break
    logger.info("Loaded %s from %s", model.name, model_file)
    return model, labels


def model_input_size(model: keras.Model) -> tuple[int, int]:
    """`(num_frames, input_size)` from the model's `frames` input shape."""
    shape = model.input.shape
    if len(shape) != 5 or shape[1] is None or shape[2] is None:
        raise ValueError(
            "The model must take frames [batch, num_frames, height, width, 3] with a "
            f"known number of frames and size. Received: input shape {tuple(shape)}."
        )
    return int(shape[1]), int(shape[2])


def _read_frames(path: str) -> np.ndarray:
    from tfrecords import video

    if os.path.isdir(path):
        frame_paths = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(_IMAGE_EXTENSIONS)
        )
        return video.read_frame_folder(path, frame_paths)
    if path.endswith(".npy"):
        frames = np.load(path)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"{path}: a .npy clip must be [num_frames, height, width, 3]. "
                f"Received: shape={frames.shape}."
            )
        return np.clip(frames, 0, 255).astype(np.uint8)
    return video.read_video_frames(path)


def load_clip(path: str, num_frames: int, input_size: int) -> np.ndarray:
    """Reads a clip and prepares it as the model's evaluation input.

    Takes the centre frame of each of `num_frames` segments (TSN evaluation
    sampling), resizes the short side to `input_size` and crops the centre.

    Args:
        path: a video file, a folder of frame images, or a `.npy` array
            `[num_frames, height, width, 3]`.
        num_frames: frames the model takes.
        input_size: the model's frame side.

    Returns:
        uint8 `[num_frames, input_size, input_size, 3]`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        ValueError: if it cannot be decoded.
    """
    import tensorflow as tf

    from tfrecords import sampling

    if not os.path.exists(path):
        raise FileNotFoundError(f"Video not found: {path!r}.")
    frames = _read_frames(path)
    indices = sampling.sample_eval_indices(len(frames), num_frames)[0]
    frames = frames[indices]
    height, width = frames.shape[1:3]
    scale = input_size / min(height, width)
    new_height, new_width = max(input_size, round(height * scale)), max(input_size, round(width * scale))
    if (new_height, new_width) != (height, width):
        frames = tf.image.resize(frames, (new_height, new_width), method="bilinear").numpy()
    top, left = (new_height - input_size) // 2, (new_width - input_size) // 2
    frames = frames[:, top : top + input_size, left : left + input_size]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


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
    files: dict[str, str] = {}

    def out(name: str) -> str:
        return os.path.join(out_dir, f"{prefix}{name}")

    cam = gradcam_lib.grad_cam(model, frames)
    num_classes = len(cam.probabilities)
    names = list(labels) if labels is not None else [f"class_{index}" for index in range(num_classes)]
    if len(names) != num_classes:
        logger.warning(
            "%d labels for a model with %d classes; using class indices.", len(names), num_classes
        )
        names = [f"class_{index}" for index in range(num_classes)]
    order = np.argsort(-cam.probabilities)[: max(1, top_k)]
    top = [{"label": names[index], "index": int(index), "probability": float(cam.probabilities[index])} for index in order]
    predicted = names[cam.class_index]

    model_similarity = stss_maps.model_stss(model, frames)
    field = motion_field_lib.motion_field_from_stss(model_similarity.similarity, temperature=temperature)
    if query is None:
        query = _default_query(model_similarity.similarity, field)
    maps = stss_maps.query_maps(model_similarity.similarity, *query)
    stride = model_similarity.stride

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
    if gif:
        height, width = field.velocity.shape[2:4]
        grid_y, grid_x = np.meshgrid(
            (np.arange(height) + 0.5) * stride - 0.5, (np.arange(width) + 0.5) * stride - 0.5, indexing="ij"
        )
        origins = np.stack([grid_y.ravel(), grid_x.ravel()], -1)
        motion_images = [
            plots.draw_arrows(frame, origins, field.velocity[0, index].reshape(-1, 2) * stride)
            for index, frame in enumerate(frames)
        ]
        files["motion_field_gif"] = plots.save_gif(motion_images, out("motion_field.gif"))
        cam_images = [
            plots.heatmap_overlay(frame, cam.maps[index]) for index, frame in enumerate(frames)
        ]
        scale = max(1, 256 // frames.shape[1])
        cam_images = [np.kron(image, np.ones((scale, scale, 1), np.uint8)) for image in cam_images]
        files["gradcam_gif"] = plots.save_gif(cam_images, out("gradcam.gif"))
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
