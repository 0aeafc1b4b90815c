"""Protocol-independent request handling: find the version, check inputs, run.

Both front ends (REST and gRPC) turn a request into numpy inputs and call
`Predictor.predict`; every way a request can be wrong ends here as a
`ServingError` with an INVALID_ARGUMENT or NOT_FOUND code, never as a crash.
"""

from __future__ import annotations

import logging
from typing import Mapping

import numpy as np
import tensorflow as tf

from serving.batching import DynamicBatcher
from serving.errors import invalid_argument, not_found
from serving.model_store import LoadedVersion, ModelStore, SignatureInfo

logger = logging.getLogger(__name__)


def _describe_shape(shape: tf.TensorShape) -> str:
    return str(tuple(-1 if dim is None else dim for dim in shape.as_list()))


def check_inputs(
    signature: SignatureInfo, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Checks names, dtypes and shapes against the signature; returns cast arrays.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input, the received value
            and what the signature expects.
    """
    expected = set(signature.inputs)
    received = set(inputs)
    unknown = sorted(received - expected)
    if unknown:
        raise invalid_argument(
            f"input tensor alias not found in signature: {', '.join(unknown)}. "
            f"Inputs expected to be in the set {{{', '.join(sorted(expected))}}}."
        )
    missing = sorted(expected - received)
    if missing:
        raise invalid_argument(
            f"Missing input tensor(s) for signature \"{signature.name}\": {', '.join(missing)}."
        )
    checked = {}
    for name, spec in signature.inputs.items():
        checked[name] = _check_one(name, spec, inputs[name])
    return checked


def _check_one(name: str, spec: tf.TensorSpec, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    expected_shape = _describe_shape(spec.shape)
    if spec.dtype == tf.string:
        if value.dtype.kind == "U":
            value = np.vectorize(lambda text: text.encode("utf-8"), otypes=[object])(value)
        if value.dtype.kind not in ("O", "S") or not all(
            isinstance(item, bytes) for item in value.reshape(-1)
        ):
            raise invalid_argument(
                f"Input `{name}` must be a string tensor (binary values as {{\"b64\": ...}}) "
                f"of shape {expected_shape}. Received: a ragged or non-string value "
                f"of dtype {value.dtype}."
            )
        value = value.astype(object)
    else:
        dtype = spec.dtype.as_numpy_dtype
        if value.dtype.kind not in "iufb":
            raise invalid_argument(
                f"Input `{name}` must be numeric ({spec.dtype.name}) of shape "
                f"{expected_shape}. Received: a ragged or non-numeric value of dtype "
                f"{value.dtype}."
            )
        if spec.dtype.is_integer and value.size:
            info = np.iinfo(dtype)
            if value.dtype.kind == "f" and not np.all(np.isfinite(value) & (value == np.round(value))):
                raise invalid_argument(
                    f"Input `{name}` must hold integers ({spec.dtype.name}). Received: "
                    "non-integer numbers."
                )
            if value.min() < info.min or value.max() > info.max:
                raise invalid_argument(
                    f"Input `{name}` values must be in [{info.min}, {info.max}] "
                    f"({spec.dtype.name}). Received: values in "
                    f"[{value.min()}, {value.max()}]."
                )
        value = value.astype(dtype, copy=False)
    if not spec.shape.is_compatible_with(value.shape):
        raise invalid_argument(
            f"Input `{name}` has shape {tuple(value.shape)} but the signature expects "
            f"{expected_shape} (-1: any size)."
        )
    if value.ndim and value.shape[0] == 0:
        raise invalid_argument(f"Input `{name}` has an empty batch: shape {tuple(value.shape)}.")
    return value


class Predictor:
    """Answers predict / metadata / status requests for one model.

    Args:
        store: the `ModelStore` of the served model.
        batcher: a `DynamicBatcher`, or None to run each request on its own.
    """

    def __init__(self, store: ModelStore, batcher: DynamicBatcher | None = None):
        self.store = store
        self.batcher = batcher

    @property
    def model_name(self) -> str:
        return self.store.name

    def check_model_name(self, name: str) -> None:
        if name != self.store.name:
            raise not_found(f"Servable not found for request: Latest({name})")

    def version(self, name: str, version: int | None = None, label: str | None = None) -> LoadedVersion:
        self.check_model_name(name)
        return self.store.get(version=version, label=label)

    def predict(
        self,
        name: str,
        inputs: Mapping[str, np.ndarray],
        *,
        signature_name: str | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> tuple[LoadedVersion, str, dict[str, np.ndarray]]:
        """Runs a prediction.

        Returns:
            `(version served, signature name used, outputs)`.

        Raises:
            ServingError: NOT_FOUND for an unknown model/version;
                INVALID_ARGUMENT for an unknown signature or bad inputs.
        """
        loaded = self.version(name, version, label)
        signature = loaded.signature(signature_name)
        checked = check_inputs(signature, inputs)

        def run(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return loaded.run(signature.name, batch)

        if self.batcher is None:
            outputs = run(checked)
        else:
            outputs = self.batcher.run((loaded.version, signature.name), run, checked)
        return loaded, signature.name, outputs
