"""Clients for the exported model: over REST, over gRPC, or in-process.

All three share one interface:

- `predict(inputs, signature_name=None)` sends a dict of numpy arrays and
  returns the output dict;
- `predict_video(path_or_frames)` samples the clip like evaluation does
  (TSN segment centres, `selfy_tf.sampling.sample_eval_indices`), sends
  the frames as JPEGs to `serving_default` (resize and centre crop happen
  in the server's graph) and returns a `ClipPrediction`.

They work against `tensorflow_model_server` and against `selfy serve`.

Example:

```python
client = RestClient("http://127.0.0.1:8501", model="selfy")
print(client.predict_video("clip.mp4").top_k)
```
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import socket
import threading
import urllib.parse
from typing import Any, Mapping, Sequence

import numpy as np

from serving import signatures as signatures_lib

DEFAULT_REST_URL = "http://127.0.0.1:8501"
DEFAULT_GRPC_TARGET = "127.0.0.1:8500"
# Python gRPC defaults to 4 MB messages; tensorflow_model_server takes 2 GB.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30


class ClientError(RuntimeError):
    """The server refused or failed a request.

    Attributes:
        status: HTTP status (REST) or `grpc.StatusCode` (gRPC).
        message: the server's error message.
    """

    def __init__(self, status: Any, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class ClipPrediction:
    """Top-k classes of one clip, best first.

    Attributes:
        labels: class names.
        scores: softmax probabilities.
        indices: class indices.
    """

    labels: list[str]
    scores: list[float]
    indices: list[int]

    @property
    def top_k(self) -> list[tuple[str, float]]:
        return list(zip(self.labels, self.scores))

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, np.ndarray], row: int = 0) -> "ClipPrediction":
        labels = [
            label.decode("utf-8") if isinstance(label, bytes) else str(label)
            for label in np.asarray(outputs[signatures_lib.TOP_K_LABELS_KEY])[row]
        ]
        return cls(
            labels=labels,
            scores=[float(score) for score in np.asarray(outputs[signatures_lib.TOP_K_SCORES_KEY])[row]],
            indices=[int(index) for index in np.asarray(outputs[signatures_lib.TOP_K_INDICES_KEY])[row]],
        )


def load_clip_frames(path_or_frames: Any) -> np.ndarray | list[bytes]:
    """A video path → decoded frames; arrays and lists of encoded frames pass through.

    Returns:
        uint8 `[num_available_frames, height, width, 3]`, or a list of JPEG/PNG
        bytes.

    Raises:
        ValueError: for anything else, naming what was received.
    """
    if isinstance(path_or_frames, (str, os.PathLike)):
        from tfrecords.video import read_video_frames

        return read_video_frames(os.fspath(path_or_frames))
    if isinstance(path_or_frames, (list, tuple)) and path_or_frames and all(
        isinstance(frame, bytes) for frame in path_or_frames
    ):
        return list(path_or_frames)
    frames = np.asarray(path_or_frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(
            "`path_or_frames` must be a video path, uint8 frames (num_frames, height, "
            "width, 3) or a list of encoded frames. Received: array of shape "
            f"{tuple(frames.shape)}."
        )
    if frames.dtype != np.uint8:
        raise ValueError(
            f"`path_or_frames` frames must be uint8 (0..255). Received: dtype {frames.dtype}."
        )
    return frames


def clip_request(frames: np.ndarray | Sequence[bytes], num_frames: int) -> dict[str, np.ndarray]:
    """The `serving_default` input for one clip: `num_frames` sampled JPEG frames."""
    from selfy_tf.sampling import sample_eval_indices
    from tfrecords.features import encode_frames

    # A frame axis of any size (-1 in the metadata): the graph samples, so send every frame.
    indices = sample_eval_indices(len(frames), num_frames)[0] if num_frames > 0 else np.arange(len(frames))
    if isinstance(frames, np.ndarray):
        encoded = encode_frames(frames[indices])
    else:
        encoded = [frames[index] for index in indices]
    return {signatures_lib.JPEG_INPUT_KEY: np.array([encoded], dtype=object)}


def _num_frames_from_signature_defs(signature_defs: Mapping[str, Any]) -> int:
    signature = signature_defs[signatures_lib.SERVING_DEFAULT]
    tensor_info = signature.inputs[signatures_lib.JPEG_INPUT_KEY]
    return int(tensor_info.tensor_shape.dim[1].size)


class _ClipClient:
    """`predict_video` on top of a subclass's `predict` and `signature_defs`."""

    _num_frames: int | None = None

    def signature_defs(self) -> dict:
        raise NotImplementedError

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def num_frames(self) -> int:
        """Frames per clip the served model takes (read once from its metadata)."""
        if self._num_frames is None:
            self._num_frames = _num_frames_from_signature_defs(self.signature_defs())
        return self._num_frames

    def predict_video(self, path_or_frames: Any) -> ClipPrediction:
        """Classifies one clip: a video file, uint8 frames or encoded frames.

        Frames are sampled at the TSN segment centres (as in evaluation) and
        sent as JPEGs to `serving_default`.
        """
        frames = load_clip_frames(path_or_frames)
        outputs = self.predict(
            clip_request(frames, self.num_frames), signatures_lib.SERVING_DEFAULT
        )
        return ClipPrediction.from_outputs(outputs)


def _to_json_value(value: np.ndarray) -> Any:
    value = np.asarray(value)
    if value.dtype.kind in ("O", "S"):
        encode = lambda item: {"b64": base64.b64encode(item).decode("ascii")}  # noqa: E731
        return np.vectorize(encode, otypes=[object])(value).tolist()
    return value.tolist()


def _from_json_value(value: Any) -> np.ndarray:
    return np.array(value)


class _NoDelayHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection with Nagle's algorithm off.

    `http.client` sends a request's headers and body as separate writes; with
    Nagle's algorithm the body waits for the server's delayed ACK, ~40 ms per
    request on a kept-alive connection.
    """

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class RestClient(_ClipClient):
    """TF Serving REST client (keeps one HTTP/1.1 connection per thread).

    Args:
        url: server root, e.g. `http://127.0.0.1:8501`.
        model: model name.
        version: a version number to pin, or None for the newest.
        timeout_s: socket timeout per request.
        columnar: send `inputs` (columnar) instead of `instances` (row format).
    """

    def __init__(
        self,
        url: str = DEFAULT_REST_URL,
        model: str = "selfy",
        version: int | None = None,
        timeout_s: float = 60.0,
        columnar: bool = True,
    ):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"`url` must be http://HOST:PORT. Received: url={url!r}.")
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self.columnar = columnar
        self._local = threading.local()

    def _model_path(self, suffix: str = "") -> str:
        path = f"/v1/models/{urllib.parse.quote(self.model)}"
        if self.version is not None:
            path += f"/versions/{int(self.version)}"
        return path + suffix

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = _NoDelayHTTPConnection(self.host, self.port, timeout=self.timeout_s)
            self._local.connection = connection
        return connection

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Sends one request; returns `(HTTP status, body)` (reconnects once)."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(2):
            connection = self._connection()
            try:
                try:
                    connection.request(method, path, body=body, headers=headers)
                except ConnectionError:
                    # A server may answer from the headers alone (413 for a
                    # body over its cap) and close without reading the rest:
                    # its reply is then waiting to be read (unless the
                    # connection never opened).
                    if connection.sock is None:
                        raise
                    answered = self._early_reply(connection)
                    if answered is None:
                        raise
                    return answered
                response = connection.getresponse()
                payload = response.read()
                if response.will_close:
                    connection.close()
                    self._local.connection = None
                return response.status, payload
            except (http.client.HTTPException, ConnectionError):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _early_reply(self, connection: http.client.HTTPConnection) -> tuple[int, bytes] | None:
        """The reply a server sent before the request was fully written, if any."""
        try:
            response = connection.getresponse()
            payload = response.read()
        except (http.client.HTTPException, OSError):
            return None
        finally:
            connection.close()
            self._local.connection = None
        return response.status, payload

    def _json(self, method: str, path: str, document: Mapping | None = None) -> dict:
        body = None if document is None else json.dumps(document).encode("utf-8")
        status, payload = self.request(method, path, body)
        try:
            answer = json.loads(payload.decode("utf-8")) if payload else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = {"error": payload[:200].decode("utf-8", errors="replace")}
        if status != 200:
            raise ClientError(status, str(answer.get("error", answer)))
        return answer

    def status(self) -> dict:
        """`GET /v1/models/<model>`: the model version status JSON."""
        return self._json("GET", self._model_path())

    def metadata(self) -> dict:
        """`GET /v1/models/<model>/metadata`: the signature map JSON."""
        return self._json("GET", self._model_path("/metadata"))

    def signature_defs(self) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        metadata = self.metadata()["metadata"]["signature_def"]
        signature_map = json_format.ParseDict(
            {"signature_def": metadata["signature_def"]},
            get_model_metadata_pb2.SignatureDefMap(),
        )
        return dict(signature_map.signature_def)

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        """`POST :predict`; returns outputs as numpy arrays (strings as `str`)."""
        document: dict[str, Any] = {}
        if signature_name:
            document["signature_name"] = signature_name
        if self.columnar:
            document["inputs"] = {name: _to_json_value(value) for name, value in inputs.items()}
        else:
            columns = {name: _to_json_value(value) for name, value in inputs.items()}
            num_rows = len(next(iter(columns.values())))
            document["instances"] = [
                {name: column[row] for name, column in columns.items()} for row in range(num_rows)
            ]
        answer = self._json("POST", self._model_path(":predict"), document)
        if "outputs" in answer:
            outputs = answer["outputs"]
            return {name: _from_json_value(value) for name, value in outputs.items()}
        rows = answer["predictions"]
        return {name: _from_json_value([row[name] for row in rows]) for name in rows[0]}

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


class GrpcClient(_ClipClient):
    """TF Serving gRPC client (`PredictionService`, `ModelService`).

    Args:
        target: `HOST:PORT`, e.g. `127.0.0.1:8500`.
        model: model name.
        version: a version number to pin, or None for the newest.
        timeout_s: deadline per call.
        max_message_bytes: send/receive limit (gRPC's default is 4 MB; an
            8×224×224×3 clip is 1.2 MB as uint8, 4.8 MB as float32).
    """

    def __init__(
        self,
        target: str = DEFAULT_GRPC_TARGET,
        model: str = "selfy",
        version: int | None = None,
        timeout_s: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if target.startswith("grpc://"):
            target = target[len("grpc://") :]
        self.target = target
        self.model = model
        self.version = version
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", int(max_message_bytes)),
                ("grpc.max_receive_message_length", int(max_message_bytes)),
            ],
        )
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._model_service = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _fill_spec(self, model_spec, signature_name: str | None = None) -> None:
        model_spec.name = self.model
        if self.version is not None:
            model_spec.version.value = int(self.version)
        if signature_name:
            model_spec.signature_name = signature_name

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise ClientError(error.code(), error.details()) from error

    def status(self):
        """`ModelService.GetModelStatus` response proto."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_spec(request.model_spec)
        return self._call(self._model_service.GetModelStatus, request)

    def metadata(self):
        """`PredictionService.GetModelMetadata` response proto (signature_def)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._fill_spec(request.model_spec)
        request.metadata_field.append("signature_def")
        return self._call(self._prediction.GetModelMetadata, request)

    def signature_defs(self) -> dict:
        from tensorflow_serving.apis import get_model_metadata_pb2

        signature_map = get_model_metadata_pb2.SignatureDefMap()
        self.metadata().metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        """`PredictionService.Predict`; returns outputs as numpy arrays."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._fill_spec(request.model_spec, signature_name)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._prediction.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self) -> None:
        self._channel.close()


class LocalClient(_ClipClient):
    """Runs an exported SavedModel in this process, with the clients' interface.

    Args:
        model_dir: a version folder (`BASE/<name>/<version>`) or a model folder
            (`BASE/<name>`, whose newest version is used).
    """

    def __init__(self, model_dir: str):
        from selfy_tf.run_dir import saved_model_version_dir
        from serving.model_store import LoadedVersion

        model_dir = saved_model_version_dir(model_dir) or model_dir
        if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
            raise FileNotFoundError(
                f"no SavedModel in {model_dir}: expected BASE/<name>/<version>/saved_model.pb "
                "or BASE/<name> holding numbered versions."
            )
        version = os.path.basename(os.path.normpath(model_dir))
        self.loaded = LoadedVersion(model_dir, int(version) if version.isdigit() else 0)

    def signature_defs(self) -> dict:
        return self.loaded.signature_defs

    def predict(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]:
        """Runs the signature directly (no validation beyond the graph's own)."""
        return self.loaded.run(signature_name, inputs)

    def close(self) -> None:
        pass


def make_client(server_or_model: str, model: str = "selfy") -> _ClipClient:
    """`http://...` → RestClient, `grpc://...` → GrpcClient, a folder → LocalClient."""
    if server_or_model.startswith("http://"):
        return RestClient(server_or_model, model=model)
    if server_or_model.startswith("grpc://"):
        return GrpcClient(server_or_model, model=model)
    return LocalClient(server_or_model)


class StreamSessions:
    """Keeps the state of each stream served by a `predict_stream` signature.

    TF Serving keeps nothing between requests, so each request of a stream
    carries the states its previous frame returned (`selfy export --stream`,
    docs/streaming.md). This helper holds them per stream id, starting from
    zeros.

    Args:
        client: a `RestClient`, `GrpcClient` or `LocalClient` of a model
            exported with `--stream`.

    Raises:
        ValueError: if the served model has no `predict_stream` signature.

    Example:

    ```python
    sessions = StreamSessions(make_client("http://127.0.0.1:8501"))
    logits = sessions.step("camera-1", frame)  # uint8 [H, W, 3]
    sessions.reset("camera-1")
    ```
    """

    def __init__(self, client: _ClipClient):
        import tensorflow as tf

        self.client = client
        signature_defs = client.signature_defs()
        if signatures_lib.PREDICT_STREAM not in signature_defs:
            raise ValueError(
                f"The served model has no `{signatures_lib.PREDICT_STREAM}` signature "
                f"(signatures: {sorted(signature_defs)}). Export a causal model with "
                "`selfy export RUN --stream`."
            )
        inputs = signature_defs[signatures_lib.PREDICT_STREAM].inputs
        frame_shape = [dim.size for dim in inputs[signatures_lib.STREAM_FRAME_INPUT_KEY].tensor_shape.dim]
        self.frame_shape = tuple(frame_shape[1:])
        self.state_specs = {
            name: (
                tuple(dim.size for dim in info.tensor_shape.dim[1:]),
                np.dtype(tf.dtypes.as_dtype(info.dtype).as_numpy_dtype),
            )
            for name, info in inputs.items()
            if name != signatures_lib.STREAM_FRAME_INPUT_KEY
        }
        self._states: dict[Any, dict[str, np.ndarray]] = {}

    @property
    def stream_ids(self) -> list:
        """The streams that have state (stepped and not reset)."""
        return list(self._states)

    def step(self, stream_id: Any, frame: np.ndarray) -> np.ndarray:
        """Sends one frame of stream `stream_id` with its state; keeps the new state.

        Args:
            stream_id: any hashable name of the stream.
            frame: uint8 RGB `[H, W, 3]` or `[1, H, W, 3]` at the model's input size.

        Returns:
            float32 logits `[1, num_classes]` of this frame.
        """
        frame = np.asarray(frame)
        if frame.ndim == 3:
            frame = frame[None]
        if frame.dtype != np.uint8 or tuple(frame.shape) != (1, *self.frame_shape):
            raise ValueError(
                f"`frame` must be uint8 of shape {self.frame_shape} or {(1, *self.frame_shape)}. "
                f"Received: shape {tuple(frame.shape)}, dtype {frame.dtype}."
            )
        states = self._states.get(stream_id)
        if states is None:
            states = {name: np.zeros((1, *shape), dtype) for name, (shape, dtype) in self.state_specs.items()}
        outputs = self.client.predict(
            {signatures_lib.STREAM_FRAME_INPUT_KEY: frame, **states}, signatures_lib.PREDICT_STREAM
        )
        self._states[stream_id] = {
            name: np.asarray(outputs[name], dtype).reshape(1, *shape)
            for name, (shape, dtype) in self.state_specs.items()
        }
        return np.asarray(outputs[signatures_lib.LOGITS_KEY], np.float32)

    def reset(self, stream_id: Any = None) -> None:
        """Forgets the state of `stream_id` (of every stream when None)."""
        if stream_id is None:
            self._states.clear()
        else:
            self._states.pop(stream_id, None)


__all__ = [
    "ClientError",
    "ClipPrediction",
    "GrpcClient",
    "LocalClient",
    "RestClient",
    "StreamSessions",
    "load_clip_frames",
    "make_client",
]
