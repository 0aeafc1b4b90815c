"""TF Serving's REST API over `http.server` (loopback only).

Routes (`[...]` optional; one of `/versions/<v>` or `/labels/<l>`):

- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]` → model status
- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata` → signatures
- `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` → predictions

Errors answer `{"error": "..."}` with 400 (bad request), 404 (unknown model,
version or route) or 503 (overloaded), and the server keeps serving. Bodies
larger than `max_request_bytes` are refused from their `Content-Length`
without being read.
"""

from __future__ import annotations

import http.server
import logging
import re
import threading

from serving.errors import ServingError, invalid_argument, not_found
from serving.server import rest_json, status
from serving.server.predictor import Predictor

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:[a-zA-Z]+)?/?$"
)


def _parse_route(path: str) -> tuple[str, int | None, str | None, str | None]:
    match = _ROUTE.match(path.split("?", 1)[0])
    if match is None:
        raise not_found(f"Malformed request: {path}")
    version = match.group("version")
    if version is not None:
        if not version.isdigit():
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    return match.group("name"), version, match.group("label"), match.group("suffix")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes on a kept-alive connection: with
    # Nagle's algorithm the body then waits for the client's delayed ACK
    # (~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server_version = "selfy-serving"
    predictor: Predictor
    max_request_bytes: int

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class name)
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: ServingError) -> None:
        self._send(error.http_status, rest_json.error_body(error.message))

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        try:
            name, version, label, suffix = _parse_route(self.path)
            if suffix not in (None, "/metadata"):
                raise not_found(f"Malformed request: GET {self.path}")
            self.predictor.check_model_name(name)
            if suffix is None:
                if label is not None:
                    version = self.predictor.version(name, label=label).version
                body = status.to_json(status.model_status_response(self.predictor.store, version))
            else:
                loaded = self.predictor.version(name, version, label)
                body = status.to_json(status.model_metadata_response(name, loaded))
            self._send(200, rest_json.dumps(body))
        except ServingError as error:
            self._send_error(error)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        try:
            body = self._read_body()
            name, version, label, suffix = _parse_route(self.path)
            if suffix != ":predict":
                if suffix in (":classify", ":regress"):
                    raise invalid_argument(
                        f"{suffix[1:]} is not supported by this model: it has only "
                        "predict signatures. Use :predict."
                    )
                raise not_found(f"Malformed request: POST {self.path}")
            document = rest_json.parse_body(body)
            self.predictor.check_model_name(name)
            loaded = self.predictor.version(name, version, label)
            signature = loaded.signature(rest_json.signature_name(document))
            inputs, request_format = rest_json.request_inputs(document, signature.inputs)
            _, _, outputs = self.predictor.predict(
                name, inputs, signature_name=signature.name, version=loaded.version
            )
            self._send(200, rest_json.dumps(rest_json.predict_response(outputs, request_format)))
        except ServingError as error:
            self._send_error(error)
        except Exception as error:  # keep serving whatever one request did
            logger.exception("internal error answering POST %s", self.path)
            self._send(500, rest_json.error_body(f"Internal error: {error}"))

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise invalid_argument("Chunked request bodies are not supported; send Content-Length.")
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.strip().isdigit():
            self.close_connection = True
            raise invalid_argument(
                f"A valid Content-Length header is required. Received: {length_header!r}."
            )
        length = int(length_header)
        if length > self.max_request_bytes:
            # Not reading the body: close the connection after answering.
            self.close_connection = True
            raise invalid_argument(
                f"Request body of {length} bytes exceeds the limit of "
                f"{self.max_request_bytes} bytes. Send JPEG frames (serving_default) "
                "or fewer clips per request."
            )
        return self.rfile.read(length)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once.
    request_queue_size = 128


class RestServer:
    """The REST front end; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests.
        port: TCP port; 0 picks a free one (see `port` after `start`).
        max_request_bytes: largest accepted request body.
    """

    def __init__(self, predictor: Predictor, port: int = 8501, max_request_bytes: int = 64 << 20):
        handler = type(
            "Handler",
            (_Handler,),
            {"predictor": predictor, "max_request_bytes": int(max_request_bytes)},
        )
        self._server = _Server((LOOPBACK_HOST, int(port)), handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="rest-server", daemon=True
        )
        self._thread.start()
        logger.info("REST API on http://%s:%d", LOOPBACK_HOST, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
