"""Export a classifier as a TF Serving SavedModel: `BASE/<name>/<version>/`.

The layout is the one `tensorflow_model_server --model_base_path=BASE/<name>`
watches: numbered version folders, each a SavedModel with the signatures of
`serving.signatures`, the class names as an asset,
`assets.extra/tf_serving_warmup_requests`, and `assets.extra/selfy.json`
recording the evaluation view the signatures apply (for `selfy eval`). A version folder appears
atomically (written under a hidden temporary name, then renamed), so a
server polling `BASE/<name>` never sees a half-written version.

Example:

```python
from serving.export import export_saved_model
result = export_saved_model(model, "exported", name="selfy", labels=labels)
print(result.path)  # exported/selfy/1
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import keras

from selfy_tf import run_dir
from selfy_tf.eval_view import EvalView
from selfy_tf.files import atomic_write_text, temporary_pattern
from selfy_tf.ops import stss_xla
from serving import signatures as signatures_lib
from serving import warmup as warmup_lib

logger = logging.getLogger(__name__)

LABELS_ASSET = run_dir.LABELS_FILE
MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching.config"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """Where an export went.

    Attributes:
        path: the version folder `BASE/<name>/<version>`.
        version: the version number.
        signature_config: sizes and top-k the signatures were built with.
    """

    path: str
    version: int
    signature_config: signatures_lib.SignatureConfig


def list_versions(model_dir: str) -> list[int]:
    """Version numbers present under `model_dir` (numeric folder names), sorted."""
    if not os.path.isdir(model_dir):
        return []
    versions = []
    for entry in os.listdir(model_dir):
        if entry.isdigit() and os.path.isdir(os.path.join(model_dir, entry)):
            versions.append(int(entry))
    return sorted(versions)


def model_input_facts(model: keras.Model) -> tuple[int, int, int]:
    """`(num_frames, input_size, num_classes)` of a clip classifier.

    Raises:
        ValueError: if the model does not take `[batch, frames, size, size, 3]`
            clips and return `[batch, classes]` logits.
    """
    input_shape = tuple(model.inputs[0].shape)
    output_shape = tuple(model.outputs[0].shape)
    if (
        len(input_shape) != 5
        or input_shape[-1] != 3
        or None in input_shape[1:]
        or input_shape[2] != input_shape[3]
    ):
        raise ValueError(
            "The model must take clips of shape (batch, num_frames, size, size, 3) "
            f"with fixed sizes. Received: input shape {input_shape}."
        )
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ValueError(
            "The model must return logits of shape (batch, num_classes). "
            f"Received: output shape {output_shape}."
        )
    return int(input_shape[1]), int(input_shape[2]), int(output_shape[-1])


STAGING_PREFIX = ".tmp-"
STAGING_PID_TAG = "pid"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _remove_stale_staging_dirs(model_dir: str) -> list[str]:
    """Deletes `.tmp-*` staging folders left by exports that were killed.

    A folder is stale when the process that made it (its id is in the
    name) is gone, or when its name carries no process id (older exports).
    Folders of exports still running are kept. Numbered versions are never
    touched: an export only renames a complete SavedModel to its number.

    Returns:
        the removed paths.
    """
    removed = []
    for entry in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, entry)
        if not entry.startswith(STAGING_PREFIX) or not os.path.isdir(path):
            continue
        fields = entry[len(STAGING_PREFIX) :].split("-")
        pid_fields = [
            field[len(STAGING_PID_TAG) :]
            for field in fields
            if field.startswith(STAGING_PID_TAG) and field[len(STAGING_PID_TAG) :].isdigit()
        ]
        if pid_fields and _process_alive(int(pid_fields[0])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.info("removed %s, left by an interrupted export", path)
        removed.append(path)
    return removed


def _next_version(model_dir: str, version: int | None) -> int:
    existing = list_versions(model_dir)
    if version is None:
        return (existing[-1] + 1) if existing else 1
    if version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version}.")
    if version in existing:
        raise FileExistsError(
            f"version {version} already exists in {model_dir}. Pass another --version "
            "or leave it out to take the next number."
        )
    return version


def export_saved_model(
    model: keras.Model,
    base_dir: str,
    *,
    name: str = "selfy",
    labels: Sequence[str],
    version: int | None = None,
    top_k: int = 5,
    view_settings: Mapping[str, Any] | None = None,
    write_configs: bool = True,
    fold_batch_norms: bool = True,
    stream: bool = False,
) -> ExportResult:
    """Exports `model` to `base_dir/<name>/<version>/` for TF Serving.

    Args:
        model: a clip classifier, frames `[batch, num_frames, size, size, 3]`
            (0..255) → logits `[batch, num_classes]`. Its signatures are
            traced with the STSS op's XLA switch off (`selfy_tf.ops.stss_xla`),
            whatever the caller's setting.
        base_dir: the model base folder (`--model_base_path` is
            `base_dir/<name>`).
        name: the model name clients ask for.
        labels: one class name per class (checked by
            `selfy_tf.run_dir.check_labels`: single lines of at most 512
            characters).
        version: version number; None takes the next free one.
        top_k: classes returned by the `top_k_*` outputs (capped at the
            number of classes).
        view_settings: the resize of the evaluation view the signatures
            apply before the centre crop (`selfy_tf.eval_view`), as
            `EvalView.resize_settings()` gives it: `{"scale_size": S}` or
            `{"eval_size": [H, W]}`; None: the default rule. Pass the
            model's stored view (`run_dir.LoadedModel.view_settings`) to
            serve what `selfy eval` scores.
        write_configs: also write `models.config` and `batching.config`
            examples into `base_dir` when they do not exist yet.
        fold_batch_norms: export `selfy_tf.models.fold_batch_norms(model)`:
            the same logits (to float rounding) with every batch norm folded
            into the convolution before it, faster on CPU (up to ~14 % under
            bfloat16). `model` itself is left unchanged.
        stream: also add the `predict_stream` signature of a causal model
            (frame and states in, logits and states out; `serving.stream`).

    Returns:
        An `ExportResult`.

    Raises:
        ValueError: for a bad name, labels or sizes, or `stream` for a model
            that is not causal.
        FileExistsError: if `version` is already exported.
    """
    if not name or os.sep in name or name.startswith(".") or ":" in name:
        raise ValueError(
            f"`name` must be a plain folder name. Received: name={name!r}. Try name='selfy'."
        )
    num_frames, input_size, num_classes = model_input_facts(model)
    labels = run_dir.check_labels(labels)
    if len(labels) != num_classes:
        raise ValueError(
            f"`labels` has {len(labels)} class names but the model has {num_classes} "
            "classes. Give a labels file with one name per class."
        )
    if top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer. Received: top_k={top_k}.")
    config = signatures_lib.SignatureConfig(
        view=EvalView.from_settings(view_settings, num_frames, input_size),
        top_k=min(int(top_k), num_classes),
    )
    model_dir = os.path.join(base_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    version = _next_version(model_dir, version)
    if stream:
        from selfy_tf.streaming import stream_model

        stream_model(model)  # refuses a model that is not causal, before any writing
    if fold_batch_norms:
        from selfy_tf.models import fold_batch_norms as fold

        model = fold(model)

    _remove_stale_staging_dirs(model_dir)
    # The exporting process's id in the name tells a later export whether
    # this folder is still being written (see _remove_stale_staging_dirs).
    staging_dir = tempfile.mkdtemp(
        prefix=f"{STAGING_PREFIX}{version}-{STAGING_PID_TAG}{os.getpid()}-", dir=model_dir
    )
    try:
        labels_file = os.path.join(staging_dir, "source", LABELS_ASSET)
        os.makedirs(os.path.dirname(labels_file))
        run_dir.write_labels(labels_file, labels)
        saved_model_dir = os.path.join(staging_dir, "saved_model")
        _write_saved_model(model, labels_file, config, saved_model_dir, stream)
        warmup_lib.write_warmup_requests(saved_model_dir, name=name, config=config)
        run_dir.write_saved_model_info(saved_model_dir, config.view)
        final_dir = os.path.join(model_dir, str(version))
        # os.rename fails if another export took the number meanwhile.
        os.rename(saved_model_dir, final_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    if write_configs:
        write_server_configs(base_dir, name)
    logger.info("exported version %d to %s", version, final_dir)
    return ExportResult(path=final_dir, version=version, signature_config=config)


def _write_saved_model(
    model: keras.Model,
    labels_file: str,
    config: signatures_lib.SignatureConfig,
    path: str,
    stream: bool = False,
) -> None:
    label_table = signatures_lib.make_label_table(labels_file)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.track(label_table)
    functions = signatures_lib.make_endpoint_functions(model, label_table, config)
    specs = signatures_lib.input_signatures(config)
    # TF Serving runs SavedModels without XLA unless told to; an inner
    # `tf.function(jit_compile=True)` would be saved as `_XlaMustCompile`.
    # Off here even when the exporting process turned it on (e.g. after
    # training).
    with stss_xla(False):
        # serving_default first: the archive aliases its first endpoint as
        # the default signature.
        for signature_name in signatures_lib.SIGNATURE_NAMES:
            archive.add_endpoint(signature_name, functions[signature_name], specs[signature_name])
        if stream:
            from serving.stream import add_stream_endpoint

            add_stream_endpoint(archive, model)
        archive.write_out(path, verbose=False)


def models_config_text(name: str, base_path: str) -> str:
    """A `--model_config_file` for `tensorflow_model_server` serving `name`."""
    return (
        "# tensorflow_model_server --model_config_file=models.config\n"
        "# base_path is where the model folder is mounted in the container.\n"
        "model_config_list {\n"
        "  config {\n"
        f'    name: "{name}"\n'
        f'    base_path: "{base_path}"\n'
        '    model_platform: "tensorflow"\n'
        "    model_version_policy { latest { num_versions: 1 } }\n"
        "  }\n"
        "}\n"
    )


def batching_config_text(max_batch_size: int = 16, batch_timeout_micros: int = 5000) -> str:
    """A `--batching_parameters_file` for `tensorflow_model_server --enable_batching`."""
    return (
        "# tensorflow_model_server --enable_batching "
        "--batching_parameters_file=batching.config\n"
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        "max_enqueued_batches { value: 64 }\n"
        "num_batch_threads { value: 2 }\n"
    )


def _remove_stale_config_temporaries(base_dir: str) -> list[str]:
    """Deletes temporaries of `models.config` / `batching.config` left by killed exports.

    `atomic_write_text` writes `.NAME.tmp-PID-...` beside the file and
    renames it; a kill between the two leaves it behind. Temporaries of a
    process still running are kept (it may be writing right now).

    Returns:
        the removed paths.
    """
    removed = []
    for file_name in (MODELS_CONFIG, BATCHING_CONFIG):
        for path in sorted(glob.glob(temporary_pattern(os.path.join(base_dir, file_name)))):
            pid = os.path.basename(path).rpartition(".tmp-")[2].split("-")[0]
            if pid.isdigit() and _process_alive(int(pid)):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            logger.info("removed %s, left by an interrupted export", path)
            removed.append(path)
    return removed


def write_server_configs(base_dir: str, name: str) -> list[str]:
    """Writes `models.config` / `batching.config` examples unless present.

    Returns:
        The paths written.
    """
    _remove_stale_config_temporaries(base_dir)
    written = []
    contents = {
        MODELS_CONFIG: models_config_text(name, f"/models/{name}"),
        BATCHING_CONFIG: batching_config_text(),
    }
    for file_name, text in contents.items():
        path = os.path.join(base_dir, file_name)
        if os.path.exists(path):
            continue
        atomic_write_text(path, text)
        written.append(path)
    return written


def saved_model_signature_defs(path: str) -> dict:
    """The `SignatureDef` protos of the SavedModel at `path`, by name."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    return dict(saved_model.meta_graphs[0].signature_def)


__all__ = [
    "ExportResult",
    "batching_config_text",
    "export_saved_model",
    "list_versions",
    "model_input_facts",
    "models_config_text",
    "saved_model_signature_defs",
    "write_server_configs",
]
