"""TF Serving's gRPC API: `PredictionService` (Predict, GetModelMetadata) and
`ModelService.GetModelStatus`, from the tensorflow-serving-api protos.

Python gRPC servers accept 4 MB messages by default; this one accepts
`RequestLimits.max_request_bytes` (answered with INVALID_ARGUMENT above it,
with headroom before gRPC itself refuses with RESOURCE_EXHAUSTED). Each
request tensor's dtype, declared shape and payload size are checked before
it is built. The port is bound exclusively. Classify, Regress and
MultiInference answer UNIMPLEMENTED: the exported model has predict
signatures only.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import math
import socket

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import PortInUseError, ServingError, invalid_argument
from serving.server import status
from serving.server.predictor import Predictor, RequestLimits, check_declared_shape

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"

# TensorProto field holding the values of each dtype when `tensor_content` is
# empty, and how many entries one element takes there.
_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


# Integer dtypes carried in the int32 `int_val` field, which holds values
# outside their range (numpy refuses to narrow them).
_NARROW_INT_DTYPES = {
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16,
}


def _check_int_range(name: str, proto) -> None:
    info = np.iinfo(_NARROW_INT_DTYPES[proto.dtype])
    values = np.asarray(proto.int_val, dtype=np.int64)
    low, high = int(values.min()), int(values.max())
    if low < info.min or high > info.max:
        raise invalid_argument(
            f"Input `{name}` values must be in [{info.min}, {info.max}] "
            f"({_dtype_name(proto.dtype)}). Received: int_val values in [{low}, {high}]."
        )


def _dtype_name(dtype_enum: int) -> str:
    try:
        return types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return "an unknown dtype"


def tensor_from_proto(name: str, proto, spec: tf.TensorSpec, limits: RequestLimits):
    """A request `TensorProto` as a numpy array, checked before it is built.

    The dtype, the declared shape (against the signature and the caps) and
    the payload size (the content must hold exactly one value per element,
    as TF Serving requires) are checked first, so a message of a few bytes
    cannot make the server allocate a huge tensor.

    Raises:
        ServingError: INVALID_ARGUMENT naming the input and what is wrong.
    """
    if proto.dtype not in _VALUE_FIELDS:
        raise invalid_argument(
            f"Input `{name}` has dtype {_dtype_name(proto.dtype)} (enum {proto.dtype}), which "
            f"cannot be a request tensor. The signature expects {spec.dtype.name}."
        )
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"Input `{name}` has no shape (unknown rank).")
    shape = [dim.size for dim in proto.tensor_shape.dim]
    check_declared_shape(name, spec, shape, limits)
    num_elements = math.prod(shape)
    field, per_element = _VALUE_FIELDS[proto.dtype]
    if proto.tensor_content:
        item_size = tf.dtypes.as_dtype(proto.dtype).size
        if proto.dtype == types_pb2.DT_STRING or len(proto.tensor_content) != num_elements * item_size:
            raise invalid_argument(
                f"Input `{name}`: tensor_content holds {len(proto.tensor_content)} bytes but "
                f"shape {tuple(shape)} of {_dtype_name(proto.dtype)} needs "
                f"{num_elements * item_size}."
            )
    else:
        num_values = len(getattr(proto, field))
        if num_values != num_elements * per_element:
            raise invalid_argument(
                f"Input `{name}`: {field} holds {num_values // per_element} values but shape "
                f"{tuple(shape)} has {num_elements} elements. Send one value per element."
            )
        if proto.dtype in _NARROW_INT_DTYPES and num_values:
            _check_int_range(name, proto)
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError, OverflowError) as error:
        raise invalid_argument(f"Input `{name}` is not a valid TensorProto: {error}") from error


def _version_and_label(model_spec) -> tuple[int | None, str | None]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return int(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _abort(context: grpc.ServicerContext, error: ServingError) -> None:
    context.abort(error.code, error.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`tensorflow.serving.PredictionService` on a `Predictor`."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:  # noqa: N802
        try:
            size = request.ByteSize()
            max_request_bytes = self.predictor.limits.max_request_bytes
            if size > max_request_bytes:
                raise invalid_argument(
                    f"Request of {size} bytes exceeds the limit of {max_request_bytes} "
                    "bytes (`selfy serve --max-request-mb`). Send JPEG frames "
                    "(serving_default) or fewer clips per request."
                )
            version, label = _version_and_label(request.model_spec)
            loaded, signature = self.predictor.resolve(
                request.model_spec.name,
                request.model_spec.signature_name or None,
                version,
                label,
            )
            inputs = {}
            for name, proto in request.inputs.items():
                spec = signature.inputs.get(name)
                if spec is None:  # check_inputs names every unknown input
                    inputs[name] = None
                    continue
                inputs[name] = tensor_from_proto(name, proto, spec, self.predictor.limits)
            outputs = self.predictor.run(loaded, signature, inputs)
            output_filter = list(request.output_filter)
            unknown = sorted(set(output_filter) - set(outputs))
            if unknown:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {', '.join(unknown)}. "
                    f"Outputs expected to be in the set {{{', '.join(sorted(outputs))}}}."
                )
            response = predict_pb2.PredictResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature.name
            for name in output_filter or outputs:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(outputs[name]))
            return response
        except ServingError as error:
            _abort(context, error)

    def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:  # noqa: N802
        try:
            version, label = _version_and_label(request.model_spec)
            loaded = self.predictor.version(request.model_spec.name, version, label)
            return status.model_metadata_response(
                request.model_spec.name, loaded, list(request.metadata_field)
            )
        except ServingError as error:
            _abort(context, error)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`tensorflow.serving.ModelService.GetModelStatus`, for health checks."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:  # noqa: N802
        try:
            self.predictor.check_model_name(request.model_spec.name)
            version, label = _version_and_label(request.model_spec)
            if label is not None:
                version = self.predictor.version(request.model_spec.name, label=label).version
            return status.model_status_response(self.predictor.store, version)
        except ServingError as error:
            _abort(context, error)


def _port_in_use_message(port: int) -> str:
    return (
        f"gRPC port {port} is already in use on {LOOPBACK_HOST}. Stop the other server "
        "or choose another port with --grpc-port (0: any free port)."
    )


def _check_port_free(port: int) -> None:
    """Raises PortInUseError if something listens on `port` (gRPC's own bind
    failure only reaches Python as a generic error after a C-level log line)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT by a stopped server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK_HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(_port_in_use_message(port)) from error
            raise


class GrpcServer:
    """The gRPC front end; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests (its `limits.max_request_bytes` is
            the largest request answered).
        port: TCP port; 0 picks a free one (see `port` after `start`).
        max_workers: request threads.

    Raises:
        PortInUseError: when another process listens on `port`.
    """

    def __init__(self, predictor: Predictor, port: int = 8500, max_workers: int = 32):
        port = int(port)
        if port:
            _check_port_free(port)
        # Headroom over the limit so oversized requests reach Predict and get
        # a clear INVALID_ARGUMENT; beyond it gRPC answers RESOURCE_EXHAUSTED.
        message_limit = min(2 * predictor.limits.max_request_bytes + (1 << 20), 2**31 - 1)
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
                # grpcio sets SO_REUSEPORT by default: a second server on the
                # same port would then silently take half of the connections.
                ("grpc.so_reuseport", 0),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(predictor), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(predictor), self._server
        )
        try:
            self._port = self._server.add_insecure_port(f"{LOOPBACK_HOST}:{port}")
        except RuntimeError as error:  # grpcio >= 1.60 raises where older ones returned 0
            raise PortInUseError(_port_in_use_message(port)) from error
        if self._port == 0:
            raise PortInUseError(_port_in_use_message(port))

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._server.start()
        logger.info("gRPC API on %s:%d", LOOPBACK_HOST, self.port)

    def stop(self) -> None:
        self._server.stop(grace=1).wait()
