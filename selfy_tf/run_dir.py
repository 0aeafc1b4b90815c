"""The run directory, `labels.txt`, and loading a trained model: one owner for each.

`selfy train` writes a run directory that the other commands read:

    RUN/config.yaml            the resolved ExperimentConfig
    RUN/labels.txt             class names, line i = class i
    RUN/checkpoints/best.keras best model so far (by `train.monitor`)
    RUN/checkpoints/last.keras model after the last finished epoch
    RUN/backup/backup.npz      resumable state (weights, optimizer, progress)
    RUN/logs/                  TensorBoard: loss, top-1/top-5, lr, clips/s
    RUN/history.csv            one row per finished epoch
    RUN/result.json            what `selfy train` reports at the end
    RUN/eval.json              written by `selfy eval`
    RUN/train.log              the log of `selfy train`

Every file is written atomically (`selfy_tf.files`), so a crash never leaves
a half-written file behind. A `.keras` file saved by `save_model` also holds
`selfy.json` in its archive: the model's evaluation view (how frames are
resized before the crop, see `selfy_tf.eval_view`), so a `.keras` file
copied out of its run is still scored as the run scores it. An exported
SavedModel keeps the same record, with its clip size, in
`<version>/assets.extra/selfy.json` (`write_saved_model_info`).

`labels.txt` (datasets, runs, exports, LiteRT models) is read by
`read_labels` and written by `write_labels` only.

A run's STSS XLA policy (`runtime.stss_xla` in its `config.yaml`, default
`DEFAULT_STSS_XLA`) is read by `run_stss_xla` only: `load_model` gives it
as `LoadedModel.stss_xla_scope()`, which `selfy eval`, `selfy predict` and
`selfy viz` run the model in.

Nothing here imports TensorFlow or Keras at import time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zipfile
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from selfy_tf import compat
from selfy_tf import eval_view as eval_view_lib
from selfy_tf.files import atomic_path, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import keras

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
# Class names travel in every top-k reply; longer ones are refused.
MAX_LABEL_LENGTH = 512
# The member of a `.keras` archive holding the evaluation view.
MODEL_INFO_MEMBER = "selfy.json"
KERAS_EXTENSION = ".keras"
# The trainer's resumable state, in a backup folder (`RunPaths.backup`, or a
# worker's folder beside it).
BACKUP_FILE = "backup.npz"
SAVED_MODEL_FILE = "saved_model.pb"
# Where an export keeps its class names (`serving.export` writes them).
SAVED_MODEL_LABELS = os.path.join("assets", LABELS_FILE)
# Where an export records its evaluation view and clip size; TF Serving
# ignores `assets.extra/` beyond its warm-up requests.
SAVED_MODEL_INFO = os.path.join("assets.extra", MODEL_INFO_MEMBER)
# A model record holds a few settings; a larger one (e.g. a member that
# inflates to gigabytes) is refused before it is read.
MAX_MODEL_INFO_BYTES = 1 << 20
_UTF8_BOM = "\ufeff"
# The STSS op's XLA switch (`selfy_tf.ops.stss_xla`) while a run trains and
# whenever its model is called in Python (evaluation, `selfy predict`,
# `selfy viz`), unless its `runtime.stss_xla` says otherwise: its gathers
# are faster compiled, even on CPU (benchmarks/README.md). Exports and
# LiteRT conversion always trace without it.
DEFAULT_STSS_XLA = True


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Paths inside one run directory."""

    root: str

    @property
    def config(self) -> str:
        return os.path.join(self.root, "config.yaml")

    @property
    def labels(self) -> str:
        return os.path.join(self.root, LABELS_FILE)

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.root, "checkpoints")

    @property
    def best_checkpoint(self) -> str:
        return os.path.join(self.checkpoints, "best.keras")

    @property
    def last_checkpoint(self) -> str:
        return os.path.join(self.checkpoints, "last.keras")

    @property
    def backup(self) -> str:
        return os.path.join(self.root, "backup")

    @property
    def backup_file(self) -> str:
        return os.path.join(self.backup, BACKUP_FILE)

    @property
    def train_log(self) -> str:
        return os.path.join(self.root, "train.log")

    @property
    def logs(self) -> str:
        return os.path.join(self.root, "logs")

    @property
    def history(self) -> str:
        return os.path.join(self.root, "history.csv")

    @property
    def result(self) -> str:
        return os.path.join(self.root, "result.json")

    @property
    def eval_json(self) -> str:
        return os.path.join(self.root, "eval.json")

    def make_dirs(self) -> None:
        for path in (self.root, self.checkpoints, self.backup, self.logs):
            os.makedirs(path, exist_ok=True)


# ---------------------------------------------------------------------------
# labels.txt


def check_labels(labels: Sequence[str], source: str = "`labels`") -> list[str]:
    """Checks class names: non-empty single lines, unique, at most `MAX_LABEL_LENGTH` characters.

    Args:
        labels: the class names, class i first-to-last.
        source: what to name in errors (a file, or an argument).

    Returns:
        The names as a list of `str`.

    Raises:
        ValueError: naming the first bad class and what is expected.
    """
    names = [str(label) for label in labels]
    if not names:
        raise ValueError(f"{source}: no class names. Expected one class name per line.")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        where = f"{source} class {index} (line {index + 1})"
        if not name.strip() or "\n" in name or "\r" in name:
            raise ValueError(f"{where}: class names must be non-empty single lines. Received: {name!r}.")
        if len(name) > MAX_LABEL_LENGTH:
            raise ValueError(
                f"{where}: a class name of {len(name)} characters (starting {name[:40]!r}); "
                f"at most {MAX_LABEL_LENGTH} are allowed. Shorten it."
            )
        if name in seen:
            raise ValueError(f"{where}: class {name!r} repeats line {seen[name] + 1}. Class names must be unique.")
        seen[name] = index
    return names


def read_labels(path: str) -> list[str]:
    """Reads a `labels.txt`: line i (from 0) is the name of class i.

    A UTF-8 byte-order mark is dropped, each name is stripped of surrounding
    spaces, and blank lines at the end are ignored.

    Args:
        path: the file, or a directory holding it (a converted dataset, a
            run directory).

    Raises:
        FileNotFoundError: if there is no such file.
        ValueError: for a blank, repeated or over-long name, naming the file
            and line.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        directory, path = path, os.path.join(path, LABELS_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no {LABELS_FILE} in {directory}: is it a dataset written by "
                "`selfy tfrecords build` or `tfrecords.write_split`, or a run of `selfy train`?"
            )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"labels file not found: {path}")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if text.startswith(_UTF8_BOM):
        text = text[len(_UTF8_BOM) :]
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return check_labels(lines, path)


def labels_text(labels: Sequence[str]) -> str:
    """The `labels.txt` content of checked class names."""
    return "".join(f"{name}\n" for name in check_labels(labels))


def write_labels(path: str, labels: Sequence[str], *, keep_existing: bool = False) -> str:
    """Writes `labels.txt` atomically after `check_labels`; returns `path`.

    Names are stripped of surrounding spaces, as `read_labels` strips them.

    Args:
        path: the file to write; its folder is created.
        labels: the class names, class i first-to-last.
        keep_existing: when `path` exists, check that it lists the same
            classes instead of replacing it (the splits of one dataset share
            one class list).

    Raises:
        ValueError: for a bad name (`check_labels`), or with `keep_existing`
            an existing file with other classes, naming the first differing
            line.
    """
    path = os.fspath(path)
    labels = check_labels([str(name).strip() for name in labels])
    if keep_existing and os.path.exists(path):
        existing = read_labels(path)
        if existing != labels:
            line = next(
                (number for number, (old, new) in enumerate(zip(existing, labels), start=1) if old != new),
                min(len(existing), len(labels)) + 1,
            )
            raise ValueError(
                f"{path} has {len(existing)} classes that differ from the {len(labels)} classes given "
                f"(first difference at line {line}). All splits of a dataset share one class list: "
                "pass the same class list, or write to another directory."
            )
        return path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, labels_text(labels))
    return path


# ---------------------------------------------------------------------------
# Finding and loading a trained model


def is_saved_model(path: str) -> bool:
    """True for a SavedModel directory (or a `BASE/<name>` folder of numbered versions)."""
    return saved_model_version_dir(path) is not None


def saved_model_version_dir(path: str) -> str | None:
    """The SavedModel folder behind `path`, or None when `path` holds none.

    `path` is a version folder (`BASE/<name>/<version>`, holding
    `saved_model.pb`) or a model folder (`BASE/<name>`), whose newest
    numbered version is taken.
    """
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    if not os.path.isdir(path):
        return None
    versions = sorted(
        int(entry)
        for entry in os.listdir(path)
        if entry.isdigit() and os.path.isfile(os.path.join(path, entry, SAVED_MODEL_FILE))
    )
    return os.path.join(path, str(versions[-1])) if versions else None


def _keras_needed_error(path: str, reason: str | None) -> ValueError:
    because = f"; {reason}" if reason else ""
    return ValueError(
        f"{path!r} is an exported SavedModel, not a Keras model{because}. Pass the training run "
        "directory or the .keras file it was exported from."
    )


def find_model_file(path: str) -> str:
    """The `.keras` file behind a run directory or a `.keras` path.

    A run directory gives `checkpoints/best.keras`, else
    `checkpoints/last.keras`.

    Raises:
        FileNotFoundError: nothing there, naming what was expected.
        ValueError: a SavedModel (served or predicted, not loaded as Keras).
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"No model at {path!r}. Pass a training run directory or a .keras file."
        )
    if is_saved_model(path):
        raise _keras_needed_error(path, None)
    paths = RunPaths(path)
    for candidate in (paths.best_checkpoint, paths.last_checkpoint):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"No checkpoint in run directory {path!r}: expected {paths.best_checkpoint} or "
        f"{paths.last_checkpoint}."
    )


def find_run_dir(path: str) -> str | None:
    """The run directory of a run path or of a `RUN/checkpoints/*.keras` file, if any."""
    path = os.path.abspath(os.fspath(path))
    candidates = [path] if os.path.isdir(path) else [os.path.dirname(os.path.dirname(path))]
    for candidate in candidates:
        if os.path.isdir(RunPaths(candidate).checkpoints) or os.path.isfile(RunPaths(candidate).config):
            return candidate
    return None


def find_labels(path: str) -> str | None:
    """The `labels.txt` of a run directory or model file: the run's, else one beside the file."""
    run_dir = find_run_dir(path)
    candidates = [RunPaths(run_dir).labels] if run_dir else []
    if os.path.isfile(path):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(path)), LABELS_FILE))
    return next((candidate for candidate in candidates if os.path.isfile(candidate)), None)


def read_model_info(model_path: str) -> dict[str, Any]:
    """The `selfy.json` stored in a `.keras` archive (empty for other files).

    Raises:
        ValueError: if the member is not a JSON object, naming the file.
    """
    if not zipfile.is_zipfile(model_path):
        return {}
    where = f"{model_path}: {MODEL_INFO_MEMBER}"
    with zipfile.ZipFile(model_path) as archive:
        if MODEL_INFO_MEMBER not in archive.namelist():
            return {}
        # The declared size first, then a bounded read: the header may lie.
        if archive.getinfo(MODEL_INFO_MEMBER).file_size > MAX_MODEL_INFO_BYTES:
            raise ValueError(_model_info_too_large(where))
        with archive.open(MODEL_INFO_MEMBER) as member:
            data = member.read(MAX_MODEL_INFO_BYTES + 1)
    if len(data) > MAX_MODEL_INFO_BYTES:
        raise ValueError(_model_info_too_large(where))
    return parse_json_object(data.decode("utf-8", errors="replace"), where)


def _model_info_too_large(where: str) -> str:
    return (
        f"{where} is larger than {MAX_MODEL_INFO_BYTES} bytes; a model record holds a "
        "few settings. The file is damaged or not a selfy model."
    )


def write_saved_model_info(saved_model_dir: str, view: eval_view_lib.EvalView) -> str:
    """Records the evaluation view of an exported SavedModel in `SAVED_MODEL_INFO`.

    The view is in the signatures' graph too, where no reader can get it
    back: `selfy eval` reads this record to score the SavedModel on the
    clips its graph would make.

    Args:
        saved_model_dir: the SavedModel folder being written.
        view: the view its signatures apply (one clip, one crop).

    Returns:
        The path written.
    """
    path = os.path.join(saved_model_dir, SAVED_MODEL_INFO)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {
        "eval_view": view.resize_settings(),
        "num_frames": view.num_frames,
        "input_size": view.crop_size,
    }
    atomic_write_text(path, json.dumps(record) + "\n")
    return path


def read_saved_model_info(saved_model_dir: str) -> dict[str, Any]:
    """The record `write_saved_model_info` left in a SavedModel (empty when there is none).

    Raises:
        ValueError: if the record is not a JSON object, naming the file.
    """
    path = os.path.join(saved_model_dir, SAVED_MODEL_INFO)
    if not os.path.isfile(path):
        return {}
    with open(path, "rb") as handle:
        data = handle.read(MAX_MODEL_INFO_BYTES + 1)
    if len(data) > MAX_MODEL_INFO_BYTES:
        raise ValueError(_model_info_too_large(path))
    return parse_json_object(data.decode("utf-8", errors="replace"), path)


def saved_model_clip_shape(info: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """`(num_frames, size, size)` from a SavedModel's record (`read_saved_model_info`); None without one."""
    if "num_frames" not in info or "input_size" not in info:
        return None
    size = int(info["input_size"])
    return int(info["num_frames"]), size, size


def parse_json_object(text: str, source: str) -> dict[str, Any]:
    """Parses a JSON object (a stored evaluation view or model info).

    Raises:
        ValueError: if `text` is not a JSON object, naming `source`.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not valid JSON: {error}.") from error
    if not isinstance(value, dict):
        raise ValueError(f"{source} must hold a JSON object, e.g. {{\"scale_size\": 37}}.")
    return value


def _read_run_config(run_dir: str | None) -> dict[str, Any]:
    """A run's `config.yaml` as a plain dict (empty when there is none)."""
    if run_dir is None or not os.path.isfile(RunPaths(run_dir).config):
        return {}
    import yaml

    with open(RunPaths(run_dir).config, encoding="utf-8") as handle:
        values = yaml.safe_load(handle) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{RunPaths(run_dir).config} must hold a mapping of config sections.")
    return compat.move_model_stss_jit(values)


def run_stss_xla(run_config: dict[str, Any]) -> bool:
    """The STSS XLA policy of a run: its `runtime.stss_xla`, else `DEFAULT_STSS_XLA`.

    Args:
        run_config: the run's `config.yaml` as a dict (`{}` for a model
            without a run).
    """
    runtime = run_config.get("runtime") or {}
    return bool(runtime.get("stss_xla", DEFAULT_STSS_XLA))


def _run_config_view(run_config: dict[str, Any]) -> dict[str, Any] | None:
    """The evaluation view of a run's `config.yaml` (runs saved before views were stored)."""
    data = run_config.get("data") or {}
    if "eval_size" not in data:
        return None
    eval_size = list(data.get("eval_size") or [])
    return {"eval_size": eval_size} if eval_size else {"scale_size": data.get("scale_size")}


@dataclasses.dataclass
class LoadedModel:
    """A trained model with what belongs to it: a Keras model, or an exported SavedModel.

    Attributes:
        model: the `keras.Model`; None for a SavedModel (its signatures are
            run by `serving.client.make_client(model_path)`).
        labels: class names (None when no `labels.txt` was found).
        view_settings: the stored evaluation view (`EvalView.resize_settings()`),
            None when unknown: the default rule then applies to a Keras
            model; a SavedModel exported without its record keeps its view
            in its graph only.
        model_path: the `.keras` file loaded, or the SavedModel version folder.
        run_dir: its run directory, or None.
        clip_shape: `(num_frames, height, width)` a SavedModel takes, from
            its record; None for a Keras model (its input shape tells) or a
            SavedModel without the record.
        stss_xla: whether the STSS op runs XLA-compiled when this model is
            called in Python (`run_stss_xla` of its run); see `stss_xla_scope`.
    """

    model: "keras.Model | None"
    labels: list[str] | None
    view_settings: dict[str, Any] | None
    model_path: str
    run_dir: str | None
    clip_shape: tuple[int, int, int] | None = None
    stss_xla: bool = DEFAULT_STSS_XLA

    def stss_xla_scope(self):
        """A context in which the STSS op follows the run's XLA policy (`selfy_tf.ops.stss_xla`).

        Example:

            with loaded.stss_xla_scope():
                logits = loaded.model(clips, training=False)
        """
        from selfy_tf.ops import stss_xla

        return stss_xla(self.stss_xla)

    @property
    def is_saved_model(self) -> bool:
        """True for an exported SavedModel (no Keras model)."""
        return self.model is None

    def eval_view(self, num_clips: int = 1, num_crops: int = 1) -> eval_view_lib.EvalView:
        """The model's evaluation view, with `num_clips` x `num_crops` views.

        Raises:
            ValueError: for a SavedModel exported without its record, naming
                the file that is missing.
        """
        if self.model is not None:
            clip_shape = self.model.inputs[0].shape
        elif self.clip_shape is not None:
            clip_shape = self.clip_shape
        else:
            raise ValueError(
                f"{self.model_path!r} holds no {SAVED_MODEL_INFO}: its evaluation view and clip size "
                "are only inside its graph (exported by an older selfy-tf). Export the model again "
                "with `selfy export`, or pass the training run directory or .keras file."
            )
        return eval_view_lib.view_from_clip_shape(
            clip_shape, self.view_settings, num_clips=num_clips, num_crops=num_crops
        )


def _register_custom_objects() -> None:
    import selfy_tf.layers  # noqa: F401  (registers the custom layers)
    import selfy_tf.models  # noqa: F401


def load_model(
    path: str,
    labels_path: str | None = None,
    require_labels: bool = False,
    *,
    allow_saved_model: bool = False,
    keras_needed_for: str | None = None,
) -> LoadedModel:
    """Loads a trained model: what every `selfy` command means by MODEL.

    Args:
        path: a run directory (its `checkpoints/best.keras`, else
            `last.keras`), a `.keras` file, or an exported SavedModel
            (`BASE/<name>/<version>`, or `BASE/<name>` for its newest version).
        labels_path: a `labels.txt` overriding the one found with the model
            (the run's, one beside the file, or the SavedModel's asset).
        require_labels: raise when no labels are found.
        allow_saved_model: open a SavedModel (its folder and labels; the
            graph is loaded by whoever runs it). When False a SavedModel is
            refused with a message naming what to pass instead.
        keras_needed_for: why the caller needs the Keras model, said in
            that message (e.g. "selfy tflite converts the Keras layers").

    Returns:
        A `LoadedModel`.

    Raises:
        FileNotFoundError: no model, or no labels with `require_labels`.
        ValueError: a SavedModel without `allow_saved_model`, or bad labels.
    """
    saved_model_dir = saved_model_version_dir(path)
    if saved_model_dir is not None:
        if not allow_saved_model:
            raise _keras_needed_error(os.fspath(path), keras_needed_for)
        if labels_path is None:
            asset = os.path.join(saved_model_dir, SAVED_MODEL_LABELS)
            labels_path = asset if os.path.isfile(asset) or require_labels else None
        labels = read_labels(labels_path) if labels_path else None
        info = read_saved_model_info(saved_model_dir)
        return LoadedModel(None, labels, info.get("eval_view"), saved_model_dir, None, saved_model_clip_shape(info))
    import keras

    model_path = find_model_file(path)
    run_dir = find_run_dir(path)
    labels_path = labels_path or find_labels(path)
    if labels_path is None and require_labels:
        raise FileNotFoundError(
            f"No {LABELS_FILE} for {path!r}: expected one in its run directory or beside the "
            "model file. Pass one with --labels FILE (one class name per line)."
        )
    labels = read_labels(labels_path) if labels_path else None
    info = read_model_info(model_path)
    run_config = _read_run_config(run_dir)
    view_settings = info.get("eval_view")
    if view_settings is None:
        view_settings = _run_config_view(run_config)
    _register_custom_objects()
    model = keras.saving.load_model(model_path, compile=False)
    if labels is not None and len(labels) != int(model.outputs[0].shape[-1]):
        raise ValueError(
            f"{labels_path} has {len(labels)} class names but the model {model_path} has "
            f"{int(model.outputs[0].shape[-1])} classes. Give a labels file with one name per class."
        )
    logger.info("Loaded %s (%s)", model_path, f"{len(labels)} classes" if labels else "no labels")
    return LoadedModel(model, labels, view_settings, model_path, run_dir, stss_xla=run_stss_xla(run_config))


def save_model(model: "keras.Model", path: str, view: eval_view_lib.EvalView | None = None) -> str:
    """Saves `model` as a `.keras` file atomically, with its evaluation view inside.

    Args:
        model: the Keras model.
        path: the `.keras` file to write.
        view: the evaluation view to store (`EvalView.resize_settings()`);
            None stores none.

    Returns:
        `path`.
    """
    with atomic_path(path, suffix=KERAS_EXTENSION) as temporary:
        model.save(temporary)
        if view is not None:
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(MODEL_INFO_MEMBER, json.dumps({"eval_view": view.resize_settings()}))
    return path


__all__ = [
    "BACKUP_FILE",
    "LABELS_FILE",
    "LoadedModel",
    "MAX_LABEL_LENGTH",
    "DEFAULT_STSS_XLA",
    "RunPaths",
    "check_labels",
    "find_labels",
    "find_model_file",
    "find_run_dir",
    "is_saved_model",
    "labels_text",
    "load_model",
    "parse_json_object",
    "read_labels",
    "read_model_info",
    "read_saved_model_info",
    "saved_model_clip_shape",
    "run_stss_xla",
    "save_model",
    "saved_model_version_dir",
    "write_labels",
    "write_saved_model_info",
]
