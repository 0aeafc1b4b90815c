"""`evaluate(model, data_dir)`: top-1/top-5, per-class accuracy, confusion matrix.

The model is a Keras model, a training run, a `.keras` file, an exported
SavedModel or a `.tflite` file: each is scored on the clips of its own
evaluation view (`selfy_tf.eval_view`), so the figures of a run and of its
exports can be compared.

Multi-view testing: each video gives `num_clips` clips (spread evenly over
it) x `num_crops` crops (1 centre crop, or 3 crops along the long side); the
softmax scores of its views are averaged before taking the prediction.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping

import keras
import numpy as np

from selfy_tf import run_dir
from selfy_tf.eval_view import EvalView
from selfy_tf.files import atomic_path, atomic_write_json
from selfy_tf.ops import stss_xla

if TYPE_CHECKING:  # pragma: no cover
    from tfrecords.split import Split

logger = logging.getLogger(__name__)

__all__ = ["SplitScores", "classification_report", "evaluate", "predict_split"]


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


def _write_report(report: dict[str, Any], class_names: list[str], output_dir: str) -> dict[str, str]:
    """Writes `eval.json` (the report, with the paths) and the confusion matrix as JSON and PNG.

    Returns:
        The paths written: `{"eval_json", "confusion_json", "confusion_png"}`.
    """
    os.makedirs(output_dir, exist_ok=True)
    files = {
        "eval_json": run_dir.RunPaths(output_dir).eval_json,
        "confusion_json": os.path.join(output_dir, "confusion_matrix.json"),
        "confusion_png": os.path.join(output_dir, "confusion_matrix.png"),
    }
    atomic_write_json(
        files["confusion_json"],
        {"class_names": class_names, "rows": "true class", "columns": "predicted class",
         "matrix": report["confusion_matrix"]},
    )
    _plot_confusion(np.asarray(report["confusion_matrix"]), class_names, files["confusion_png"])
    atomic_write_json(files["eval_json"], {**report, "files": files})
    return files


@dataclasses.dataclass
class _Classifier:
    """A trained model of any kind, as evaluation runs it.

    Attributes:
        name: what the report calls it (its path, or the Keras model's name).
        clip_shape: `(num_frames, height, width)` it takes.
        view_settings: its stored evaluation view (`EvalView.resize_settings()`),
            None for the default rule.
        num_classes: length of its logits.
        logits: uint8 clips `[clips, num_frames, height, width, 3]` (a
            tensor) -> float32 logits `[clips, num_classes]` (numpy).
        owner: what `logits` needs kept alive (a loaded SavedModel, whose
            signatures lose their variables once it is collected).
        stss_xla: the STSS op's XLA switch while `logits` runs (the run's
            policy, `run_dir.run_stss_xla`); graphs that were exported or
            converted ignore it.
    """

    name: str
    clip_shape: tuple[int, int, int]
    view_settings: dict[str, Any] | None
    num_classes: int
    logits: Callable[[Any], np.ndarray]
    owner: Any = None
    stss_xla: bool = run_dir.DEFAULT_STSS_XLA


def _keras_classifier(
    model: keras.Model,
    name: str,
    view_settings: dict[str, Any] | None,
    stss_xla: bool = run_dir.DEFAULT_STSS_XLA,
) -> _Classifier:
    # TensorFlow only here: `import trainer` must not need it (training on JAX).
    import tensorflow as tf

    # Traced on the first batch, with the STSS op's XLA switch as the run
    # trained (the caller holds `stss_xla(classifier.stss_xla)`).
    @tf.function
    def logits(frames):
        return tf.cast(model(frames, training=False), tf.float32)

    shape = tuple(model.inputs[0].shape)
    return _Classifier(
        name=name,
        clip_shape=tuple(int(size) for size in shape[1:4]),
        view_settings=view_settings,
        num_classes=int(model.outputs[0].shape[-1]),
        logits=lambda frames: logits(frames).numpy(),
        stss_xla=stss_xla,
    )


def _saved_model_classifier(loaded: run_dir.LoadedModel) -> _Classifier:
    import tensorflow as tf

    from serving import signatures

    # Raises for an export without its recorded view, naming the fix.
    view = loaded.eval_view()
    saved_model = tf.saved_model.load(loaded.model_path)
    # `predict_frames` takes clips already at the model's size as they are
    # (its graph only samples them, which keeps all `num_frames`): the same
    # pixels as the Keras model gets, through the graph TF Serving runs.
    function = saved_model.signatures[signatures.PREDICT_FRAMES]

    def logits(frames) -> np.ndarray:
        return function(**{signatures.FRAMES_INPUT_KEY: frames})[signatures.LOGITS_KEY].numpy()

    return _Classifier(
        name=loaded.model_path,
        clip_shape=(view.num_frames, view.crop_size, view.crop_size),
        view_settings=loaded.view_settings,
        num_classes=int(function.structured_outputs[signatures.LOGITS_KEY].shape[-1]),
        logits=logits,
        owner=saved_model,
    )


def _litert_classifier(path: str) -> _Classifier:
    from serving.tflite_runtime import TFLiteClassifier

    classifier = TFLiteClassifier(path)

    def logits(frames) -> np.ndarray:
        # The converted model takes one clip per call.
        return np.concatenate([classifier.predict(clip)["logits"] for clip in np.asarray(frames)])

    return _Classifier(
        name=path,
        clip_shape=tuple(classifier.input_shape[1:4]),
        view_settings=classifier.view_settings,
        num_classes=classifier.num_classes,
        logits=logits,
    )


def _open_classifier(model: keras.Model | run_dir.LoadedModel | str) -> _Classifier:
    if isinstance(model, keras.Model):
        return _keras_classifier(model, model.name, None)
    if isinstance(model, run_dir.LoadedModel):
        loaded = model
    else:
        from serving.tflite_runtime import is_tflite_file

        path = os.fspath(model)
        if is_tflite_file(path):
            return _litert_classifier(path)
        loaded = run_dir.load_model(path, allow_saved_model=True)
    if loaded.is_saved_model:
        return _saved_model_classifier(loaded)
    return _keras_classifier(loaded.model, loaded.model_path, loaded.view_settings, loaded.stss_xla)


@dataclasses.dataclass
class SplitScores:
    """A model's scores on every video of a split, in file order.

    Attributes:
        scores: float `[num_videos, num_classes]`, the softmax scores of each
            video's views, averaged.
        labels: int64 `[num_videos]`, the true classes.
        class_names: the dataset's class names.
        view: the evaluation view the clips were made with.
        model_name: the model's path (or a Keras model's name).
    """

    scores: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    view: EvalView
    model_name: str


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict_split(
    model: keras.Model | run_dir.LoadedModel | str,
    data_dir: str,
    *,
    split: str = "validation",
    num_clips: int = 1,
    num_crops: int = 1,
    batch_size: int = 8,
    view_settings: Mapping[str, Any] | None = None,
    max_batches: int | None = None,
    verbose: bool | str = "auto",
) -> SplitScores:
    """Scores every video of a split of a converted dataset.

    Args:
        model: a Keras model, a `run_dir.LoadedModel`, or a path: a run
            directory (its `best.keras`, else `last.keras`), a `.keras`
            file, an exported SavedModel (`BASE/<name>` for its newest
            version, or `BASE/<name>/<version>`; run through its
            `predict_frames` signature) or a `.tflite` file (run with LiteRT).
        data_dir, split, num_clips, num_crops, batch_size, view_settings,
            max_batches, verbose: as in `evaluate`.

    Returns:
        A `SplitScores`.

    Raises:
        FileNotFoundError: missing model, data directory or labels.
        ValueError: no shards for `split`, labels that do not fit the
            model's number of classes, or a SavedModel exported without its
            evaluation view.
    """
    classifier, view, split_info = _resolve(model, data_dir, split, num_clips, num_crops, view_settings)
    if verbose == "auto":
        verbose = sys.stderr.isatty()
    return _score(classifier, view, split_info, int(batch_size), max_batches, bool(verbose))


def _resolve(
    model: keras.Model | run_dir.LoadedModel | str,
    data_dir: str,
    split: str,
    num_clips: int,
    num_crops: int,
    view_settings: Mapping[str, Any] | None,
) -> tuple[_Classifier, EvalView, "Split"]:
    """The classifier, its evaluation view and the split, checked against each other."""
    from selfy_tf.eval_view import view_from_clip_shape
    from tfrecords import open_split
    from tfrecords.split import labels_path

    classifier = _open_classifier(model)
    if view_settings is None:
        view_settings = classifier.view_settings
    view = view_from_clip_shape(classifier.clip_shape, view_settings, num_clips=num_clips, num_crops=num_crops)
    split_info = open_split(data_dir, split)
    if len(split_info.labels) != classifier.num_classes:
        raise ValueError(
            f"{labels_path(data_dir)} lists {len(split_info.labels)} classes but the model "
            f"{classifier.name} predicts {classifier.num_classes}."
        )
    return classifier, view, split_info


def _score(
    classifier: _Classifier,
    view: EvalView,
    split_info: "Split",
    batch_size: int,
    max_batches: int | None,
    verbose: bool,
) -> SplitScores:
    """Runs `classifier` on every video of `split_info` through `view`; the views' scores are averaged."""
    import tensorflow as tf
    from tqdm import tqdm

    from tfrecords import make_dataset

    dataset = make_dataset(split_info.files, training=False, batch_size=batch_size, eval_view=view)
    num_views = view.num_views
    all_scores, all_labels = [], []
    progress = tqdm(desc=f"eval {split_info.name}", unit="video", disable=not verbose, file=sys.stderr)
    with stss_xla(classifier.stss_xla), progress:
        for batch_index, (frames, labels) in enumerate(dataset):
            if max_batches is not None and batch_index >= max_batches:
                break
            if num_views > 1:
                # [batch, views, ...] -> [batch * views, ...]: one clip per row.
                shape = tf.shape(frames)
                frames = tf.reshape(frames, tf.concat([[shape[0] * num_views], shape[2:]], axis=0))
            probabilities = _softmax(classifier.logits(frames).astype(np.float64))
            all_scores.append(probabilities.reshape(int(labels.shape[0]), num_views, -1).mean(axis=1))
            all_labels.append(labels.numpy())
            progress.update(int(labels.shape[0]))
    num_classes = classifier.num_classes
    scores = np.concatenate(all_scores, axis=0) if all_scores else np.zeros((0, num_classes))
    labels = np.concatenate(all_labels, axis=0).astype(np.int64) if all_labels else np.zeros((0,), np.int64)
    return SplitScores(scores, labels, split_info.labels, view, classifier.name)


def report_dir(model_path: str | os.PathLike) -> str:
    """Where the report on the model at `model_path` goes unless told otherwise.

    The run directory of a run (or of a checkpoint in one); for an exported
    SavedModel `BASE/<name>`, beside its version folders (the version folder
    itself is what TF Serving loads); else the folder holding the model file
    (`.keras` or `.tflite`).

    Args:
        model_path: a model path as `evaluate` takes it.

    Returns:
        An absolute directory path.

    Raises:
        FileNotFoundError: no model at `model_path`.
    """
    from serving.tflite_runtime import is_tflite_file

    path = os.fspath(model_path)
    saved_model_dir = run_dir.saved_model_version_dir(path)
    if saved_model_dir is not None:
        return os.path.dirname(os.path.abspath(saved_model_dir))
    if is_tflite_file(path):
        return os.path.dirname(os.path.abspath(path))
    return run_dir.find_run_dir(path) or os.path.dirname(os.path.abspath(run_dir.find_model_file(path)))


def evaluate(
    model_or_run_dir: keras.Model | run_dir.LoadedModel | str,
    data_dir: str,
    *,
    split: str = "validation",
    num_clips: int = 1,
    num_crops: int = 1,
    batch_size: int = 8,
    view_settings: Mapping[str, Any] | None = None,
    output_dir: str | None = None,
    max_batches: int | None = None,
    verbose: bool | str = "auto",
) -> dict[str, Any]:
    """Evaluates a trained model on a split of a converted dataset.

    Args:
        model_or_run_dir: a Keras model, a `run_dir.LoadedModel`, or a path:
            a run directory (its `best.keras`, else `last.keras`, and its
            `config.yaml`), a `.keras` file, an exported SavedModel
            (`BASE/<name>` or `BASE/<name>/<version>`) or a `.tflite` file.
        data_dir: dataset directory with `<split>-*.tfrecord` and `labels.txt`.
        split: split name, default "validation".
        num_clips: clips per video (score-averaged), default 1.
        num_crops: 1 (centre) or 3 crops per clip, default 1.
        batch_size: videos per batch, default 8.
        view_settings: the resize of the evaluation view, as
            `EvalView.resize_settings()` gives it: `{"scale_size": S}` (the
            short side to S) or `{"eval_size": [H, W]}`. None: the view stored
            with the model (the one its training validated with, recorded in
            `.keras` files, exported SavedModels and beside `.tflite` files),
            else the default rule (`selfy_tf.eval_view`).
        output_dir: where `eval.json`, `confusion_matrix.json` and
            `confusion_matrix.png` go (`report_dir(path)` is where `selfy
            eval` puts them); None: write nothing.
        max_batches: stop after this many batches (quick checks).
        verbose: progress bar on stderr ("auto": when it is a terminal).

    Returns:
        dict with `top1`, `top5`, `mean_class_accuracy`, `num_examples`,
        `num_clips`, `num_crops`, `per_class`, `confusion_matrix`, `split`,
        `data_dir`, `model` and the written `files`.

    Raises:
        FileNotFoundError: missing model, data directory or labels.
        ValueError: no shards for `split`, labels that do not fit the
            model's number of classes, or a SavedModel exported without its
            evaluation view.
    """
    predicted = predict_split(
        model_or_run_dir,
        data_dir,
        split=split,
        num_clips=num_clips,
        num_crops=num_crops,
        batch_size=batch_size,
        view_settings=view_settings,
        max_batches=max_batches,
        verbose=verbose,
    )
    class_names = predicted.class_names
    report = classification_report(predicted.scores, predicted.labels, class_names)
    report.update(
        {
            "num_clips": int(num_clips),
            "num_crops": int(num_crops),
            "eval_view": predicted.view.resize_settings(),
            "split": split,
            "data_dir": os.path.abspath(data_dir),
            "model": predicted.model_name,
            "files": {},
        }
    )
    if output_dir:
        report["files"] = _write_report(report, class_names, output_dir)
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
