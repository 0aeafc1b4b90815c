"""`evaluate(model_or_run_dir, data_dir)`: top-1/top-5, per-class accuracy, confusion matrix.

Multi-view testing: each video gives `num_clips` clips (spread evenly over
it) x `num_crops` crops (1 centre crop, or 3 crops along the long side); the
softmax scores of its views are averaged before taking the prediction.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import keras
import numpy as np

from selfy_tf import run_dir
from selfy_tf.files import atomic_path, atomic_write_json
from selfy_tf.ops import stss_xla

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "classification_report"]


def classification_report(
    scores: np.ndarray, labels: np.ndarray, class_names: list[str], top_k: int = 5
) -> dict[str, Any]:
    """Accuracy figures from averaged scores.

    Args:
        scores: float `[num_examples, num_classes]`.
        labels: int `[num_examples]`.
        class_names: names of the classes (length `num_classes`).
        top_k: k of the top-k accuracy (capped at `num_classes`).

    Returns:
        dict with `top1`, `top5` (top-k), `mean_class_accuracy` (mean over
        classes that have examples), `num_examples`, `per_class`
        (`{name: {"accuracy", "num_examples", "num_predicted"}}`) and
        `confusion_matrix` (rows: true class, columns: predicted).
    """
    num_classes = len(class_names)
    if scores.shape[0] == 0:
        raise ValueError("No examples to evaluate: the split is empty.")
    if scores.shape[1] != num_classes:
        raise ValueError(
            f"The model predicts {scores.shape[1]} classes but there are {num_classes} class names."
        )
    top_k = min(top_k, num_classes)
    predictions = np.argmax(scores, axis=1)
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    top1 = float(np.mean(predictions == labels))
    top5 = float(np.mean(np.any(ranked == labels[:, None], axis=1)))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    per_class = {}
    accuracies = []
    for index, name in enumerate(class_names):
        count = int(confusion[index].sum())
        accuracy = float(confusion[index, index] / count) if count else None
        if accuracy is not None:
            accuracies.append(accuracy)
        per_class[name] = {
            "index": index,
            "accuracy": accuracy,
            "num_examples": count,
            "num_predicted": int(confusion[:, index].sum()),
        }
    return {
        "top1": top1,
        "top5": top5,
        "top_k": top_k,
        "mean_class_accuracy": float(np.mean(accuracies)),
        "num_examples": int(labels.shape[0]),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _plot_confusion(confusion: np.ndarray, class_names: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_classes = len(class_names)
    size = min(4 + num_classes * 0.25, 40)
    figure, axes = plt.subplots(figsize=(size, size))
    totals = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, np.maximum(totals, 1))
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("Confusion matrix (rows normalised)")
    if num_classes <= 50:
        axes.set_xticks(range(num_classes), class_names, rotation=90, fontsize=7)
        axes.set_yticks(range(num_classes), class_names, fontsize=7)
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


def evaluate(
    model_or_run_dir: keras.Model | run_dir.LoadedModel | str,
    data_dir: str,
    *,
    split: str = "validation",
    num_clips: int = 1,
    num_crops: int = 1,
    batch_size: int = 8,
    eval_size: tuple[int, int] | None | str = "auto",
    scale_size: int | None = None,
    output_dir: str | None = "auto",
    max_batches: int | None = None,
    verbose: bool | str = "auto",
) -> dict[str, Any]:
    """Evaluates a trained model on a split of a converted dataset.

    Args:
        model_or_run_dir: a Keras model, a `run_dir.LoadedModel`, a `.keras`
            file, or a run directory (its `best.keras`, else `last.keras`,
            and its `config.yaml`).
        data_dir: dataset directory with `<split>-*.tfrecord` and `labels.txt`.
        split: split name, default "validation".
        num_clips: clips per video (score-averaged), default 1.
        num_crops: 1 (centre) or 3 crops per clip, default 1.
        batch_size: videos per batch, default 8.
        eval_size: `(height, width)` frames are resized to before cropping;
            "auto" takes the evaluation view stored with the model (the one
            its training validated with; for an in-memory model or a file
            without one, the short side to `round(crop * 256 / 224)`); None
            resizes the short side to `scale_size`. See `tfrecords.eval_view`.
        scale_size: short side before cropping when `eval_size` is None
            (default `round(crop * 256 / 224)`).
        output_dir: where `eval.json`, `confusion_matrix.json` and
            `confusion_matrix.png` go; "auto": the run directory (else the
            `.keras` file's directory), nothing for an in-memory model; None:
            write nothing.
        max_batches: stop after this many batches (quick checks).
        verbose: progress bar on stderr ("auto": when it is a terminal).

    Returns:
        dict with `top1`, `top5`, `mean_class_accuracy`, `num_examples`,
        `num_clips`, `num_crops`, `per_class`, `confusion_matrix`, `split`,
        `data_dir`, `model` and the written `files`.

    Raises:
        FileNotFoundError: missing model, data directory or labels.
        ValueError: no shards for `split`, or labels that do not fit the
            model's number of classes.
    """
    from tfrecords import make_dataset, open_split
    from tfrecords.eval_view import view_from_clip_shape
    from tfrecords.split import labels_path

    view_settings = None
    if isinstance(model_or_run_dir, keras.Model):
        model = model_or_run_dir
        default_output = None
        model_name = model.name
    else:
        if isinstance(model_or_run_dir, run_dir.LoadedModel):
            loaded = model_or_run_dir
            model_name = loaded.model_path
        else:
            model_name = os.fspath(model_or_run_dir)
            loaded = run_dir.load_model(model_name)
        if loaded.model is None:
            raise ValueError(f"{loaded.model_path!r} is an exported SavedModel; evaluate its Keras model.")
        model, view_settings = loaded.model, loaded.view_settings
        default_output = loaded.run_dir or os.path.dirname(os.path.abspath(loaded.model_path))
    if output_dir == "auto":
        output_dir = default_output
    if eval_size != "auto":
        view_settings = {"eval_size": eval_size} if eval_size else {"scale_size": scale_size}
    view = view_from_clip_shape(model.input_shape, view_settings, num_clips=num_clips, num_crops=num_crops)
    num_classes = int(model.output_shape[-1])
    split_info = open_split(data_dir, split)
    class_names = split_info.labels
    if len(class_names) != num_classes:
        raise ValueError(
            f"{labels_path(data_dir)} lists {len(class_names)} classes but the model "
            f"{model_name} predicts {num_classes}."
        )
    dataset = make_dataset(
        split_info.files,
        training=False,
        num_frames=view.num_frames,
        batch_size=int(batch_size),
        crop_size=view.crop_size,
        num_clips=view.num_clips,
        num_crops=view.num_crops,
        eval_size=view.eval_size,
        scale_size=view.scale_size,
    )
    num_views = num_clips * num_crops
    # TensorFlow only here: `import trainer` must not need it (training on JAX).
    import tensorflow as tf

    @tf.function
    def predict(frames):
        if num_views > 1:
            shape = tf.shape(frames)
            flat = tf.reshape(frames, tf.concat([[shape[0] * num_views], shape[2:]], axis=0))
            probabilities = tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32), axis=-1)
            return tf.reduce_mean(tf.reshape(probabilities, [shape[0], num_views, -1]), axis=1)
        return tf.nn.softmax(tf.cast(model(frames, training=False), tf.float32), axis=-1)

    if verbose == "auto":
        verbose = sys.stderr.isatty()
    from tqdm import tqdm

    all_scores, all_labels = [], []
    # `predict` is traced on the first batch, with the STSS op's gathers
    # XLA-compiled, as in training's validation.
    with stss_xla(True), tqdm(desc=f"eval {split}", unit="video", disable=not verbose, file=sys.stderr) as progress:
        for batch_index, (frames, labels) in enumerate(dataset):
            if max_batches is not None and batch_index >= max_batches:
                break
            all_scores.append(predict(frames).numpy())
            all_labels.append(labels.numpy())
            progress.update(int(labels.shape[0]))
    scores = np.concatenate(all_scores, axis=0) if all_scores else np.zeros((0, num_classes))
    labels = np.concatenate(all_labels, axis=0).astype(np.int64) if all_labels else np.zeros((0,), np.int64)
    report = classification_report(scores, labels, class_names)
    report.update(
        {
            "num_clips": int(num_clips),
            "num_crops": int(num_crops),
            "eval_view": view.resize_settings(),
            "split": split,
            "data_dir": os.path.abspath(data_dir),
            "model": model_name,
            "files": {},
        }
    )
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        confusion_json = os.path.join(output_dir, "confusion_matrix.json")
        confusion_png = os.path.join(output_dir, "confusion_matrix.png")
        eval_json = os.path.join(output_dir, "eval.json")
        atomic_write_json(
            confusion_json,
            {"class_names": class_names, "rows": "true class", "columns": "predicted class",
             "matrix": report["confusion_matrix"]},
        )
        _plot_confusion(np.asarray(report["confusion_matrix"]), class_names, confusion_png)
        report["files"] = {"eval_json": eval_json, "confusion_json": confusion_json, "confusion_png": confusion_png}
        atomic_write_json(eval_json, report)
    logger.info(
        "%s on %s/%s (%d videos, %d clips x %d crops): top-1 %.4f, top-5 %.4f, mean class accuracy %.4f.",
        report["model"],
        data_dir,
        split,
        report["num_examples"],
        num_clips,
        num_crops,
        report["top1"],
        report["top5"],
        report["mean_class_accuracy"],
    )
    return report
