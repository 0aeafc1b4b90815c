"""Convert a clip classifier to a TFLite / LiteRT flatbuffer (builtin ops only).

The converted model has one signature, `serving_default`, with the input
`frames` (`[1, num_frames, size, size, 3]`, uint8 RGB 0..255 by default, or
float32 with the same value range) and the outputs `logits` and
`probabilities` (float32 `[1, num_classes]`). The model rescales and
normalises the frames itself, so callers feed raw pixels. Run it with
`ai_edge_litert.interpreter.Interpreter(...).get_signature_runner()`.

Conversion goes through a temporary SavedModel written by
`keras.export.ExportArchive` (which freezes the Keras variables into
constants) and `tf.lite.TFLiteConverter.from_saved_model`, restricted to
`TFLITE_BUILTINS` (`TFLITE_BUILTINS_INT8` for full-integer models): the
Select-TF-ops ("Flex") delegate is not shipped in the LiteRT pip wheels, so a
model that needs it would not run.

Quantization modes (`QUANTIZE_MODES`):

- `"none"`: float32 weights and activations.
- `"fp16"`: float16 weights, dequantised to float32 when the model loads.
- `"dynamic"`: int8 weights; activations quantised on the fly where a
  kernel supports it (dynamic-range quantization).
- `"int8"`: full-integer quantization with a representative dataset: every
  convolution and matrix product takes int8 inputs. The uint8 frames are
  cast to float and quantised once at the input; logits and probabilities
  come back as float32. Needs calibration clips (see
  `serving.tflite_calibration`).

The STSS op is traced with its XLA switch off (`selfy_tf.ops.stss_xla`,
whatever the caller's setting): an XLA-compiled inner function cannot be
converted, and the converted graph must not depend on XLA. Its `"patches"` backend uses `tf.image.extract_patches`, which is not a
TFLite builtin: such a model is refused with a message that says how to
convert it with the `"matmul"` backend (the backends share all weights).

Example:

```python
from selfy_tf.models import create_model
from serving import tflite

model = create_model("selfy_tsm_r18", num_classes=10, num_frames=8, input_size=112)
model_bytes = tflite.convert_model(model, quantize="fp16")
tflite.write_model(model_bytes, "model.tflite", labels=[f"class_{i}" for i in range(10)])
```
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from selfy_tf import ops, run_dir
from selfy_tf.eval_view import EvalView
from selfy_tf.files import atomic_write_bytes, atomic_write_json
from serving import tflite_runtime

logger = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
INPUT_DTYPES = ("uint8", "float32")
# The runtime module (no TensorFlow) owns the names of the converted model.
SIGNATURE_KEY = tflite_runtime.SIGNATURE_KEY
FRAMES_INPUT_KEY = tflite_runtime.FRAMES_INPUT_KEY
LOGITS_KEY = tflite_runtime.LOGITS_KEY
PROBABILITIES_KEY = tflite_runtime.PROBABILITIES_KEY
OUTPUT_KEYS = tflite_runtime.OUTPUT_KEYS
labels_path_for = tflite_runtime.labels_path_for

# STSS backends that cannot be expressed with TFLite builtin ops, and why.
NON_CONVERTIBLE_STSS_BACKENDS = {
    "patches": "it uses tf.image.extract_patches (ExtractImagePatches), which is "
    "not a TFLite builtin op",
}
CONVERTIBLE_STSS_BACKEND = "matmul"

RepresentativeDataset = Callable[[], Iterable[dict[str, np.ndarray]]]


def _check_one_of(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}. Received: {name}={value!r}.")
    return value


def check_quantize(quantize: str) -> str:
    """Returns `quantize` if it names a mode of `QUANTIZE_MODES`, else raises."""
    return _check_one_of("quantize", quantize, QUANTIZE_MODES)


def check_input_dtype(input_dtype: str) -> str:
    """Returns `input_dtype` if it is one of `INPUT_DTYPES`, else raises."""
    return _check_one_of("input_dtype", input_dtype, INPUT_DTYPES)


def clip_shape(model: keras.Model) -> tuple[int, int, int]:
    """`(num_frames, height, width)` of the clips `model` takes.

    Raises:
        ValueError: if the model input is not `[batch, frames, height,
            width, 3]` with static frames, height and width.
    """
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 5 or shape[-1] != 3 or any(size is None for size in shape[1:4]):
        raise ValueError(
            "The model must take clips of shape (batch, num_frames, height, "
            f"width, 3) with static sizes. Received: input shape {shape}."
        )
    return int(shape[1]), int(shape[2]), int(shape[3])


def _stss_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if hasattr(layer, "stss_backend")
    ]


@contextlib.contextmanager
def export_settings(model: keras.Model, stss_backend: str | None = None) -> Iterator[None]:
    """Temporarily sets every STSS layer of `model` up for conversion.

    Inside the context the STSS op runs without XLA (`selfy_tf.ops.stss_xla`
    off), and with `stss_backend` when given. The layers' backends and the
    XLA setting are restored on exit.

    Args:
        model: the Keras model.
        stss_backend: optional STSS backend to trace with (the backends share
            all weights); `None` keeps each layer's own.

    Raises:
        ValueError: if the backend used would be one of
            `NON_CONVERTIBLE_STSS_BACKENDS`.
    """
    if stss_backend is not None:
        _check_one_of("stss_backend", stss_backend, ops.STSS_BACKENDS)
    layers = _stss_layers(model)
    saved = [(layer, layer.stss_backend) for layer in layers]
    try:
        for layer, _ in saved:
            if stss_backend is not None:
                layer.stss_backend = stss_backend
            if layer.stss_backend in NON_CONVERTIBLE_STSS_BACKENDS:
                raise ValueError(
                    f"Layer `{layer.name}` computes the STSS with "
                    f"stss_backend={layer.stss_backend!r}, which cannot be "
                    "converted to TFLite builtin ops: "
                    f"{NON_CONVERTIBLE_STSS_BACKENDS[layer.stss_backend]}. "
                    f"Convert with stss_backend={CONVERTIBLE_STSS_BACKEND!r} "
                    "(`--stss-backend matmul`), which gives the same outputs "
                    "with the same weights."
                )
        with ops.stss_xla(False):
            yield
    finally:
        for layer, backend in saved:
            layer.stss_backend = backend


def xla_functions(concrete_function: tf.types.experimental.ConcreteFunction) -> list[str]:
    """Names of the functions in a traced graph that must be compiled with XLA.

    Args:
        concrete_function: a traced `tf.function`.

    Returns:
        Sorted names of the graph's library functions carrying
        `_XlaMustCompile=True` (empty when the graph needs no XLA).
    """
    graph_def = concrete_function.graph.as_graph_def()
    names = set()
    for function in graph_def.library.function:
        attribute = function.attr.get("_XlaMustCompile")
        if attribute is not None and attribute.b:
            names.add(function.signature.name)
    for node in graph_def.node:
        attribute = node.attr.get("_XlaMustCompile")
        if attribute is not None and attribute.b:
            names.add(node.name)
    return sorted(names)


def export_for_conversion(
    model: keras.Model,
    directory: str,
    input_dtype: str = "uint8",
    stss_backend: str | None = None,
) -> None:
    """Writes the SavedModel that `convert_saved_model` turns into TFLite.

    Its only signature, `SIGNATURE_KEY`, takes `frames`
    `[1, num_frames, height, width, 3]` of `input_dtype` and returns
    `logits` and `probabilities`. Variables are frozen by the converter.

    Args:
        model: a clip classifier (`[batch, T, H, W, 3]` 0..255 → logits).
        directory: where to write the SavedModel (created or overwritten).
        input_dtype: `"uint8"` (default) or `"float32"` frames.
        stss_backend: optional STSS backend to trace with.

    Raises:
        ValueError: for a bad `input_dtype`, a model input that is not a
            clip, a non-convertible STSS backend, or a graph that still
            needs XLA.
    """
    check_input_dtype(input_dtype)
    num_frames, height, width = clip_shape(model)
    spec = tf.TensorSpec(
        [1, num_frames, height, width, 3], tf.as_dtype(input_dtype), name=FRAMES_INPUT_KEY
    )

    def serve(frames: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(model(tf.cast(frames, tf.float32), training=False), tf.float32)
        return {LOGITS_KEY: logits, PROBABILITIES_KEY: tf.nn.softmax(logits, axis=-1)}

    with export_settings(model, stss_backend):
        function = tf.function(serve, input_signature=[spec], autograph=False)
        concrete = function.get_concrete_function()
        needs_xla = xla_functions(concrete)
        if needs_xla:
            raise ValueError(
                "The traced model still contains XLA-compiled functions "
                f"({', '.join(needs_xla)}), which TFLite cannot convert. A layer other "
                "than the STSS op (whose XLA switch is off here) compiles with XLA."
            )
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(SIGNATURE_KEY, function)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        archive.write_out(directory, verbose=False)


def _converter_settings(
    converter: tf.lite.TFLiteConverter,
    quantize: str,
    representative_dataset: RepresentativeDataset | None,
) -> None:
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]


def _check_calibration(
    quantize: str, representative_dataset: RepresentativeDataset | None
) -> None:
    check_quantize(quantize)
    if quantize == "int8" and representative_dataset is None:
        raise ValueError(
            "`quantize='int8'` (full-integer) needs calibration clips to choose "
            "the activation ranges. Received: no representative dataset. Pass "
            "`--calibration-data DIR` (TFRecord clips, e.g. a validation split), "
            "or use quantize='dynamic' (int8 weights, no calibration)."
        )


def convert_saved_model(
    saved_model_dir: str,
    quantize: str = "none",
    representative_dataset: RepresentativeDataset | None = None,
) -> bytes:
    """Converts a SavedModel from `export_for_conversion` to a TFLite flatbuffer.

    Args:
        saved_model_dir: the SavedModel directory.
        quantize: one of `QUANTIZE_MODES`.
        representative_dataset: for `"int8"` (required there, ignored
            otherwise): a callable returning an iterable of
            `{"frames": array [1, T, H, W, 3]}` calibration inputs.

    Returns:
        The flatbuffer bytes; builtin ops only.

    Raises:
        ValueError: for a bad `quantize`, `"int8"` without calibration data,
            or a graph that needs ops outside the TFLite builtins.
    """
    _check_calibration(quantize, representative_dataset)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[SIGNATURE_KEY]
    )
    _converter_settings(converter, quantize, representative_dataset)
    try:
        with warnings.catch_warnings():
            # The int8 calibrator runs TF's own deprecated tf.lite.Interpreter.
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            model_bytes = converter.convert()
    except Exception as error:  # ConverterError and RuntimeError from the calibrator
        raise ValueError(
            f"TFLite conversion (quantize={quantize!r}, builtin ops only) failed: "
            f"{error}"
        ) from error
    # Deferred import: `tflite_inspect` imports this module's constants.
    from serving import tflite_inspect

    tflite_inspect.check_builtin_only(model_bytes)
    return bytes(model_bytes)


def float32_model(model: keras.Model) -> keras.Model:
    """`model`, or a float32-compute copy of it when its layers compute in
    float16 / bfloat16 (a model trained with mixed precision).

    TFLite's float kernels are float32 (reduced precision is a quantization
    mode, `quantize="fp16"`); a bfloat16 graph does not convert to builtins.
    """
    if all(layer.compute_dtype == "float32" for layer in model.layers if layer.weights):
        return model
    from selfy_tf.models import with_dtype_policy

    logger.info("converting a float32 copy of the model (its layers compute in %s)",
                sorted({layer.compute_dtype for layer in model.layers if layer.weights}))
    return with_dtype_policy(model, "float32")


def convert_model(
    model: keras.Model,
    quantize: str = "none",
    representative_dataset: RepresentativeDataset | None = None,
    input_dtype: str = "uint8",
    stss_backend: str | None = None,
) -> bytes:
    """Converts a Keras clip classifier to a TFLite flatbuffer.

    Args:
        model: a clip classifier (`[batch, T, H, W, 3]` 0..255 → logits);
            one trained with mixed precision is converted in float32
            (`float32_model`).
        quantize: one of `QUANTIZE_MODES` (default `"none"`).
        representative_dataset: calibration inputs for `"int8"`, see
            `convert_saved_model` and `serving.tflite_calibration`.
        input_dtype: `"uint8"` (default) or `"float32"` frames.
        stss_backend: optional STSS backend to trace with instead of the
            model's own (`"matmul"` for a model built with `"patches"`).

    Returns:
        The flatbuffer bytes; signature `serving_default` with input
        `frames` and outputs `logits`, `probabilities`.

    Raises:
        ValueError: see `export_for_conversion` and `convert_saved_model`.
    """
    # Fail before the (slow) export.
    _check_calibration(quantize, representative_dataset)
    check_input_dtype(input_dtype)
    model = float32_model(model)
    directory = tempfile.mkdtemp(prefix="selfy_tflite_")
    try:
        export_for_conversion(model, directory, input_dtype, stss_backend)
        return convert_saved_model(directory, quantize, representative_dataset)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def write_model(
    model_bytes: bytes, path: str, labels: Sequence[str], view: EvalView | None = None
) -> str:
    """Writes the flatbuffer to `path`, the class names and evaluation view beside it.

    All files are written atomically (temporary file, then rename).

    Args:
        model_bytes: the flatbuffer from `convert_model`.
        path: the `.tflite` file to write.
        labels: class names, one per class; written one per line to
            `labels_path_for(path)` (`<path>.labels.txt`).
        view: the model's evaluation view; its resize rule is written to
            `<path>.view.json` for `TFLiteClassifier.predict_video` (None:
            the default rule applies).

    Returns:
        The labels file path.

    Raises:
        ValueError: if a class name is empty, holds a line break or is too
            long (see `selfy_tf.run_dir.check_labels`).
    """
    labels = run_dir.check_labels(labels)
    labels_path = labels_path_for(path)
    atomic_write_bytes(path, model_bytes)
    run_dir.write_labels(labels_path, labels)
    if view is not None:
        atomic_write_json(tflite_runtime.view_path_for(path), view.resize_settings())
    logger.info(
        "wrote %s (%.2f MB) and %s (%d classes)",
        path, len(model_bytes) / 2**20, labels_path, len(labels),
    )
    return labels_path


def compare_with_keras(
    model: keras.Model,
    classifier: tflite_runtime.TFLiteClassifier,
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
