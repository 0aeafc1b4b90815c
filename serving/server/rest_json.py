"""TF Serving's REST JSON mapping: request bodies to numpy inputs and back.

Follows https://www.tensorflow.org/tfx/serving/api_rest: a predict body has
either `instances` (row format, every input sharing the batch dimension;
answered with `predictions`) or `inputs` (columnar format; answered with
`outputs`), never both. Binary strings travel as `{"b64": "..."}`; output
tensors whose name ends in `_bytes` are sent back the same way. `NaN` and
`Infinity` are accepted and written as bare tokens, as TF Serving does.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from serving.errors import invalid_argument

ROW_FORMAT = "row"
COLUMNAR_FORMAT = "columnar"


def parse_body(body: bytes) -> dict:
    """Parses a JSON object body.

    Raises:
        ServingError: INVALID_ARGUMENT for malformed JSON or a non-object.
    """
    try:
        # json reads the bytes (or bytearray) itself: no decoded copy held here.
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from error
    except RecursionError as error:
        raise _too_deep() from error
    if not isinstance(document, dict):
        # The body, not the document: dumping a deeply nested one recurses.
        raise invalid_argument(
            f"JSON Value: {body[:80].decode('utf-8', errors='replace')} Is not an object. "
            "Expected a JSON object with `instances` or `inputs`."
        )
    return document


def _too_deep() -> Exception:
    return invalid_argument(
        "JSON Parse error: the body nests arrays or objects too deeply. A predict "
        f"body needs at most one level per tensor dimension (at most {MAX_TENSOR_RANK})."
    )


def signature_name(document: Mapping[str, Any]) -> str | None:
    """The `signature_name` of a request body (None: the default)."""
    name = document.get("signature_name")
    if name is not None and not isinstance(name, str):
        raise invalid_argument(f"'signature_name' must be a string. Received: {name!r}.")
    return name or None


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


# numpy's most dimensions: no tensor value nests deeper. The walks below
# stop there, so no body can make them recurse past Python's limit.
MAX_TENSOR_RANK = 64


def _decode_binary(value: Any, depth: int = 0) -> Any:
    if depth > MAX_TENSOR_RANK:
        raise _too_deep()
    if _is_b64(value):
        if not isinstance(value["b64"], str):
            raise invalid_argument("'b64' value must be a base64 string.")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as error:
            raise invalid_argument(f"Unable to base64 decode: {error}") from error
    if isinstance(value, list):
        return [_decode_binary(item, depth + 1) for item in value]
    if isinstance(value, dict):
        raise invalid_argument(
            f"Unexpected JSON object with keys {sorted(map(str, value))[:5]}: only "
            "{\"b64\": ...} objects may appear inside a tensor value."
        )
    return value


def _to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    try:
        if spec.dtype == tf.string:
            array = np.array(_decode_binary(value), dtype=object)
        else:
            # Numbers need no b64 walk: numpy converts large nested lists in C.
            array = np.array(value)
    except (ValueError, TypeError) as error:
        raise invalid_argument(
            f"Input `{name}` is not a rectangular (nested) list: {error}"
        ) from error
    if array.dtype == object and spec.dtype != tf.string:
        raise invalid_argument(f"Input `{name}` is a ragged or mixed-type list.")
    return array


def request_inputs(
    document: Mapping[str, Any], input_specs: Mapping[str, tf.TensorSpec]
) -> tuple[dict[str, np.ndarray], str]:
    """Turns a predict body into numpy inputs.

    Args:
        document: the parsed body.
        input_specs: the signature's inputs (their dtypes guide the decoding).

    Returns:
        `(inputs, format)` with format `ROW_FORMAT` or `COLUMNAR_FORMAT`.

    Raises:
        ServingError: INVALID_ARGUMENT for a body that is not a valid predict
            request.
    """
    has_instances = "instances" in document
    has_inputs = "inputs" in document
    if has_instances == has_inputs:
        raise invalid_argument(
            "Missing 'inputs' or 'instances' key" if not has_instances else
            "Not both of 'instances' and 'inputs' can be specified in the request."
        )
    try:
        if has_instances:
            return _row_inputs(document["instances"], input_specs), ROW_FORMAT
        return _columnar_inputs(document["inputs"], input_specs), COLUMNAR_FORMAT
    except RecursionError as error:
        # A safety net: the walks stop at MAX_TENSOR_RANK levels, but the
        # parser accepts as deep as Python's limit, whatever reads it next.
        raise _too_deep() from error


def _row_inputs(
    instances: Any, input_specs: Mapping[str, tf.TensorSpec]
) -> dict[str, np.ndarray]:
    if not isinstance(instances, list) or not instances:
        raise invalid_argument("'instances' must be a non-empty JSON list, one item per example.")
    named = all(isinstance(item, dict) and not _is_b64(item) for item in instances)
    if not named:
        if len(input_specs) != 1:
            raise invalid_argument(
                "With several named inputs, each item of 'instances' must be an object "
                f"keyed by input name ({sorted(input_specs)})."
            )
        if any(isinstance(item, dict) and not _is_b64(item) for item in instances):
            raise invalid_argument("Items of 'instances' mix objects and plain values.")
        (name, spec), = input_specs.items()
        return {name: _to_array(name, instances, spec)}
    keys = set(instances[0])
    for index, item in enumerate(instances):
        if set(item) != keys:
            raise invalid_argument(
                f"Failed to process element: {index} of 'instances' list. All objects "
                f"must have the same keys {sorted(keys)}; received {sorted(item)}."
            )
    inputs = {}
    for name in keys:
        spec = input_specs.get(name, tf.TensorSpec(None, tf.string if _looks_binary(instances[0][name]) else tf.float32))
        inputs[name] = _to_array(name, [item[name] for item in instances], spec)
    return inputs


def _looks_binary(value: Any) -> bool:
    for _ in range(MAX_TENSOR_RANK + 1):
        if not isinstance(value, list):
            return _is_b64(value) or isinstance(value, str)
        if not value:
            return False
        value = value[0]
    raise _too_deep()


def _columnar_inputs(
    inputs: Any, input_specs: Mapping[str, tf.TensorSpec]
) -> dict[str, np.ndarray]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {
            name: _to_array(
                name,
                value,
                input_specs.get(name, tf.TensorSpec(None, tf.string if _looks_binary(value) else tf.float32)),
            )
            for name, value in inputs.items()
        }
    if len(input_specs) != 1:
        raise invalid_argument(
            "With several named inputs, 'inputs' must be an object keyed by input name "
            f"({sorted(input_specs)})."
        )
    (name, spec), = input_specs.items()
    return {name: _to_array(name, inputs, spec)}


def _jsonable(name: str, value: np.ndarray) -> Any:
    if value.dtype.kind in ("O", "S"):
        if name.endswith("_bytes"):
            encode = lambda item: {"b64": base64.b64encode(item).decode("ascii")}  # noqa: E731
        else:
            encode = lambda item: item.decode("utf-8", errors="replace")  # noqa: E731
        return np.vectorize(encode, otypes=[object])(value).tolist() if value.size else value.tolist()
    return value.tolist()


def predict_response(outputs: Mapping[str, np.ndarray], request_format: str) -> dict:
    """The JSON body answering a predict request in `request_format`."""
    names = sorted(outputs)
    if request_format == COLUMNAR_FORMAT:
        if len(names) == 1:
            return {"outputs": _jsonable(names[0], outputs[names[0]])}
        return {"outputs": {name: _jsonable(name, outputs[name]) for name in names}}
    columns = {name: _jsonable(name, outputs[name]) for name in names}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    batch_sizes = {len(column) if isinstance(column, list) else -1 for column in columns.values()}
    if len(batch_sizes) != 1 or -1 in batch_sizes:
        raise invalid_argument(
            "Output tensors do not share a batch dimension; use the columnar 'inputs' format."
        )
    (batch_size,) = batch_sizes
    return {
        "predictions": [{name: columns[name][row] for name in names} for row in range(batch_size)]
    }


def dumps(document: Mapping[str, Any]) -> bytes:
    """Serialises a response body (NaN / Infinity as bare tokens, like TF Serving)."""
    return json.dumps(document, allow_nan=True).encode("utf-8")


def error_body(message: str) -> bytes:
    """TF Serving's error body: `{"error": message}`."""
    return dumps({"error": message})
