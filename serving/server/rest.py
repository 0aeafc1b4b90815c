"""TF Serving's REST API over `http.server` (loopback only).

Routes (`[...]` optional; one of `/versions/<v>` or `/labels/<l>`):

- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]` → model status
- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata` → signatures
- `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` → predictions

Errors answer `{"error": "..."}` with 400 (bad request), 404 (unknown model,
version or route), 413 (body over the size cap), 501 (unsupported method) or
503 (overloaded), and the server keeps serving. Bodies larger than the size
cap are refused from their `Content-Length` without being read.

Connections are served by a bounded pool of threads. A connection must send
its headers, and then its body, within `timeout_s` each, and an idle
kept-alive connection is closed after `timeout_s`, so half-sent requests
cannot hold threads. When every thread is busy a new connection gets 503
with `Retry-After` at once instead of waiting in the kernel's queue.
"""

from __future__ import annotations

import concurrent.futures
import errno
import http.server
import logging
import re
import socket
import threading
import time

import grpc

from serving.errors import PortInUseError, ServingError, invalid_argument, not_found
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
    # StreamRequestHandler applies it to the socket: every wait for the
    # request line, a header or the next request on a kept-alive connection.
    timeout: float

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class name)
        logger.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unsupported method) as JSON."""
        short, long = self.responses.get(code, ("Error", ""))
        text = message or short
        if explain or long:
            text = f"{text}: {explain or long}"
        self.close_connection = True
        body = rest_json.error_body(text)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

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
            loaded, signature = self.predictor.resolve(
                name, rest_json.signature_name(document), version, label
            )
            inputs, request_format = rest_json.request_inputs(document, signature.inputs)
            outputs = self.predictor.run(loaded, signature, inputs)
            self._send(200, rest_json.dumps(rest_json.predict_response(outputs, request_format)))
        except ServingError as error:
            self._send_error(error)
        except OSError as error:  # the client timed out or went away mid-request
            logger.debug("POST %s from %s: %s", self.path, self.address_string(), error)
            self.close_connection = True
        except Exception as error:  # keep serving whatever one request did
            logger.exception("internal error answering POST %s", self.path)
            self._send(500, rest_json.error_body(f"Internal error: {error}"))

    def _read_body(self) -> bytes:
        limits = self.predictor.limits
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
        if length > limits.max_request_bytes:
            # Not reading the body: close the connection after answering.
            self.close_connection = True
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Request body of {length} bytes exceeds the limit of "
                f"{limits.max_request_bytes} bytes (`selfy serve --max-request-mb`). "
                "Send JPEG frames (serving_default) or fewer clips per request.",
                http_status=413,
            )
        # One deadline for the whole body: a per-read socket timeout alone
        # lets a client that trickles a byte at a time hold the thread.
        deadline = time.monotonic() + self.timeout
        chunks, received = [], 0
        while received < length:
            chunk = None
            if time.monotonic() <= deadline:
                try:
                    chunk = self.rfile.read1(min(length - received, 1 << 20))
                except TimeoutError:
                    pass
            if chunk is None:
                self.close_connection = True
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"Request body not received within {self.timeout:g} s "
                    f"({received} of {length} bytes; `selfy serve --rest-timeout`).",
                    http_status=408,
                )
            if not chunk:
                self.close_connection = True
                raise invalid_argument(
                    f"The connection closed after {received} of {length} body bytes."
                )
            chunks.append(chunk)
            received += len(chunk)
        return b"".join(chunks)


class _Server(http.server.HTTPServer):
    """An HTTP server on a bounded thread pool that answers 503 when it is full."""

    # Bursts of connections wait here (the kernel caps it at somaxconn)
    # until the accept loop answers them, with a reply or a 503.
    request_queue_size = 1024
    # Refusals are written by their own few threads, so a client that does
    # not read its 503 cannot stall the accept loop; a burst of connections
    # waits in their queue (bounded, beyond it connections are closed).
    _NUM_REFUSAL_THREADS = 4
    _MAX_QUEUED_REFUSALS = 1024
    _REFUSAL_TIMEOUT_S = 2.0

    def __init__(self, address, handler, num_threads: int):
        self.num_threads = int(num_threads)
        self._slots = threading.BoundedSemaphore(self.num_threads)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="rest")
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self._refusal_slots = threading.BoundedSemaphore(self._MAX_QUEUED_REFUSALS)
        self._refusals = concurrent.futures.ThreadPoolExecutor(
            self._NUM_REFUSAL_THREADS, thread_name_prefix="rest-busy"
        )
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if self._slots.acquire(blocking=False):
            self._pool.submit(self._serve, request, client_address)
        elif self._refusal_slots.acquire(blocking=False):
            self._refusals.submit(self._refuse, request)
        else:
            self.shutdown_request(request)

    def _serve(self, request, client_address) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
            self.shutdown_request(request)
            self._slots.release()

    def _refuse(self, request: socket.socket) -> None:
        body = rest_json.error_body(
            f"The server is busy: all {self.num_threads} REST connections are in use "
            "(`selfy serve --rest-threads`). Retry later."
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.settimeout(self._REFUSAL_TIMEOUT_S)
            # Read what the client sent first: closing a socket with unread
            # data resets the connection, and the client may lose the reply.
            request.recv(1 << 16)
            request.sendall(head.encode("ascii") + body)
            request.shutdown(socket.SHUT_WR)
            request.recv(1 << 16)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)
            self._refusal_slots.release()

    def handle_error(self, request, client_address) -> None:
        # A client that goes away mid-request is routine; no traceback.
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        # Wake threads waiting on kept-alive connections: the pool's threads
        # are joined at interpreter exit, which would otherwise wait for
        # each connection's timeout.
        with self._open_lock:
            for connection in self._open:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._refusals.shutdown(wait=False, cancel_futures=True)


class RestServer:
    """The REST front end; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests (its `limits.max_request_bytes` is
            the largest accepted body).
        port: TCP port; 0 picks a free one (see `port` after `start`).
        num_threads: connections served at once; more get 503. Default 128.
        timeout_s: limit for receiving the headers, for the body, and for
            an idle kept-alive connection. Default 30.

    Raises:
        PortInUseError: when another process listens on `port`.
    """

    def __init__(
        self,
        predictor: Predictor,
        port: int = 8501,
        num_threads: int = 128,
        timeout_s: float = 30.0,
    ):
        if num_threads < 1 or timeout_s <= 0:
            raise ValueError(
                "`num_threads` must be at least 1 and `timeout_s` positive. Received: "
                f"num_threads={num_threads}, timeout_s={timeout_s}."
            )
        handler = type("Handler", (_Handler,), {"predictor": predictor, "timeout": float(timeout_s)})
        try:
            self._server = _Server((LOOPBACK_HOST, int(port)), handler, num_threads)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"REST port {port} is already in use on {LOOPBACK_HOST}. Stop the other "
                    "server or choose another port with --rest-port (0: any free port)."
                ) from error
            raise
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
        if self._thread is not None:  # shutdown() waits for a loop that must be running
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
