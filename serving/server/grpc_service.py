"""TF Serving's gRPC API: `PredictionService` (Predict, GetModelMetadata) and
`ModelService.GetModelStatus`, from the tensorflow-serving-api protos.

Python gRPC servers accept 4 MB messages by default; this one accepts
`max_request_bytes` (answered with INVALID_ARGUMENT above it, with headroom
before gRPC itself refuses with RESOURCE_EXHAUSTED). Classify, Regress and
MultiInference answer UNIMPLEMENTED: the exported model has predict
signatures only.
"""

from __future__ import annotations

import concurrent.futures
import logging

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.errors import ServingError, invalid_argument
from serving.server import status
from serving.server.predictor import Predictor

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"


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

    def __init__(self, predictor: Predictor, max_request_bytes: int):
        self.predictor = predictor
        self.max_request_bytes = int(max_request_bytes)

    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:  # noqa: N802
        try:
            size = request.ByteSize()
            if size > self.max_request_bytes:
                raise invalid_argument(
                    f"Request of {size} bytes exceeds the limit of {self.max_request_bytes} "
                    "bytes. Send JPEG frames (serving_default) or fewer clips per request."
                )
            inputs = {}
            for name, proto in request.inputs.items():
                try:
                    inputs[name] = tf.make_ndarray(proto)
                except (TypeError, ValueError) as error:
                    raise invalid_argument(f"Input `{name}` is not a valid TensorProto: {error}") from error
            version, label = _version_and_label(request.model_spec)
            loaded, signature_name, outputs = self.predictor.predict(
                request.model_spec.name,
                inputs,
                signature_name=request.model_spec.signature_name or None,
                version=version,
                label=label,
            )
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
            response.model_spec.signature_name = signature_name
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


class GrpcServer:
    """The gRPC front end; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests.
        port: TCP port; 0 picks a free one (see `port` after `start`).
        max_request_bytes: largest request answered.
        max_workers: request threads.
    """

    def __init__(
        self,
        predictor: Predictor,
        port: int = 8500,
        max_request_bytes: int = 64 << 20,
        max_workers: int = 32,
    ):
        # Headroom over the limit so oversized requests reach Predict and get
        # a clear INVALID_ARGUMENT; beyond it gRPC answers RESOURCE_EXHAUSTED.
        message_limit = min(2 * int(max_request_bytes) + (1 << 20), 2**31 - 1)
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", message_limit),
                ("grpc.max_send_message_length", message_limit),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(predictor, max_request_bytes), self._server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(predictor), self._server
        )
        self._port = self._server.add_insecure_port(f"{LOOPBACK_HOST}:{int(port)}")
        if self._port == 0:
            raise ValueError(f"cannot bind the gRPC port {LOOPBACK_HOST}:{port}: is it in use?")

    @property
    def port(self) -> int:
        return self._port

    def start(self) -> None:
        self._server.start()
        logger.info("gRPC API on %s:%d", LOOPBACK_HOST, self.port)

    def stop(self) -> None:
        self._server.stop(grace=1).wait()
