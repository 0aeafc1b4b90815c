"""TF Serving's REST API over `http.server` (`selfy serve --rest-backend threads`).

The routes, replies and caps are those of `serving.server.rest` (the
aiohttp front end); only the connection handling differs. Connections are
served by a bounded pool of threads. A connection must send its request
line and headers within `timeout_s` of the server starting to wait for
them (an idle kept-alive connection is closed then too), and then its
whole body within `timeout_s`: each is one deadline, however slowly the
bytes trickle in, so half-sent requests cannot hold threads. When every
thread is busy a new connection gets 503 with `Retry-After` at once,
written by one thread that never waits on a client. Request bodies held at
once are bounded in total (`max_inflight_bytes`, 503 beyond it).
"""

from __future__ import annotations

import concurrent.futures
import errno
import http.server
import io
import logging
import selectors
import socket
import threading
import time

import grpc

from serving.errors import PortInUseError, ServingError, invalid_argument
from serving.server import rest_json
from serving.server.predictor import Predictor
from serving.server.rest import (
    DEFAULT_MAX_INFLIGHT_BYTES,
    LOOPBACK_HOST,
    answer_get,
    answer_predict,
    check_predict_route,
    check_server_settings,
    declared_length,
)

logger = logging.getLogger(__name__)


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket until a deadline, however the bytes trickle in.

    A per-read socket timeout alone lets a client that sends one byte a
    second hold its connection forever; here every read gets only the time
    left before `deadline` (`time.monotonic()` seconds).
    """

    def __init__(self, connection: socket.socket):
        self._connection = connection
        self.deadline = time.monotonic()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request deadline passed")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes on a kept-alive connection: with
    # Nagle's algorithm the body then waits for the client's delayed ACK
    # (~40 ms per request on loopback).
    disable_nagle_algorithm = True
    server_version = "selfy-serving"
    predictor: Predictor
    # Seconds for the wait for a request with its request line and headers,
    # then for its body (each one deadline, see `_DeadlineReader`), and for
    # each write of a reply.
    timeout: float

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # One deadline for the wait for a request (an idle kept-alive
        # connection), its request line and every header line together.
        self._reader.deadline = time.monotonic() + self.timeout
        super().handle_one_request()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (base class name)
        logger.debug("%s %s", self.address_string(), format % args)

    def _start_reply(self, code: int) -> None:
        # Reads shrink the socket timeout towards their deadline; a reply
        # gets the whole timeout for each write again.
        self.connection.settimeout(self.timeout)
        self.send_response(code)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own errors (bad request line, unsupported method) as JSON."""
        short, long = self.responses.get(code, ("Error", ""))
        text = message or short
        if explain or long:
            text = f"{text}: {explain or long}"
        self.close_connection = True
        body = rest_json.error_body(text)
        self._start_reply(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)

    def _send(self, code: int, body: bytes) -> None:
        self._start_reply(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code == 503:
            self.send_header("Retry-After", "1")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, error: ServingError) -> None:
        self._send(error.http_status, rest_json.error_body(error.message))

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(self._get)

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self._answer(self._post)

    def _answer(self, method) -> None:
        try:
            self._send(200, method())
        except ServingError as error:
            self._send_error(error)
        except OSError as error:  # the client timed out or went away mid-request
            logger.debug("%s %s from %s: %s", self.command, self.path, self.address_string(), error)
            self.close_connection = True
        except Exception as error:  # keep serving whatever one request did
            logger.exception("internal error answering %s %s", self.command, self.path)
            self.close_connection = True
            self._send(500, rest_json.error_body(f"Internal error: {error}"))

    def _get(self) -> bytes:
        return answer_get(self.predictor, self.path)

    def _post(self) -> bytes:
        try:
            check_predict_route(self.path)
            length = declared_length(self.headers, self.predictor.limits.max_request_bytes)
        except ServingError:
            self._body_left_unread()
            raise
        if not self.server.body_budget.reserve(length):
            self._body_left_unread()
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"The server is busy: request bodies in flight would exceed "
                f"{self.server.body_budget.capacity} bytes (`selfy serve "
                "--rest-max-inflight-mb`). Retry later.",
            )
        try:
            return answer_predict(self.predictor, self.path, self._read_body(length))
        finally:
            self.server.body_budget.release(length)

    def _body_left_unread(self) -> None:
        """After the reply, the connection is closed without its body being read."""
        self.close_connection = True
        self.server.linger_after_reply(self.connection)

    def _read_body(self, length: int) -> bytearray:
        # One deadline for the whole body.
        self._reader.deadline = time.monotonic() + self.timeout
        body, received = bytearray(length), 0
        view = memoryview(body)
        while received < length:
            try:
                count = self.rfile.readinto1(view[received:])
            except TimeoutError:
                self.close_connection = True
                raise ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"Request body not received within {self.timeout:g} s "
                    f"({received} of {length} bytes; `selfy serve --rest-timeout`).",
                    http_status=408,
                ) from None
            if not count:
                self.close_connection = True
                raise invalid_argument(
                    f"The connection closed after {received} of {length} body bytes."
                )
            received += count
        view.release()
        return body  # json.loads reads a bytearray as it is: no copy


class _BodyBudget:
    """Request-body bytes the server holds at once, across all connections.

    A body's bytes are reserved from its `Content-Length` before it is
    read and released once its reply is sent, so the JSON documents and
    arrays decoded from bodies are bounded in total, not only per request.

    Args:
        capacity: most body bytes in flight.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._used = 0
        self._lock = threading.Lock()

    def reserve(self, num_bytes: int) -> bool:
        with self._lock:
            if self._used + num_bytes > self.capacity:
                return False
            self._used += num_bytes
            return True

    def release(self, num_bytes: int) -> None:
        with self._lock:
            self._used -= num_bytes


class _Refuser:
    """Answers connections beyond the thread pool with 503, on one thread.

    The reply is written without waiting (it fits a fresh socket's buffer),
    then whatever the client sends is read and dropped until it closes or
    `linger_s` passes: closing a socket with unread data resets the
    connection, and the client may lose the reply. An idle client costs a
    selector entry, never a thread's time. At most `max_connections` linger;
    beyond them connections are closed at once. Connections answered before
    their body was read (413, 503) linger here too.
    """

    def __init__(self, reply: bytes, max_connections: int = 1024, linger_s: float = 2.0):
        self._reply = reply
        self._max_connections = max_connections
        self._linger_s = linger_s
        self._selector = selectors.DefaultSelector()
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="rest-busy", daemon=True)
        self._thread.start()

    def refuse(self, connection: socket.socket) -> None:
        """Answers `connection` with the 503, then lingers on it."""
        try:
            connection.setblocking(False)
            connection.send(self._reply)
        except OSError:
            connection.close()
            return
        self.linger(connection)

    def linger(self, connection: socket.socket) -> None:
        """Closes `connection` for writing, then drops what it sends until it closes."""
        try:
            connection.setblocking(False)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            connection.close()
            return
        with self._lock:
            if self._closing or len(self._deadlines) >= self._max_connections:
                connection.close()
                return
            self._deadlines[connection] = time.monotonic() + self._linger_s
            self._selector.register(connection, selectors.EVENT_READ)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_write.send(b"x")
        except OSError:  # the wake-up pipe is full: the loop is awake anyway
            pass

    def _drop(self, connection: socket.socket) -> None:
        try:
            self._selector.unregister(connection)
        except (KeyError, ValueError):  # already gone
            pass
        self._deadlines.pop(connection, None)
        connection.close()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    break
                timeout = min(self._deadlines.values(), default=time.monotonic() + 1.0) - time.monotonic()
            for key, _ in self._selector.select(max(timeout, 0.0)):
                if key.fileobj is self._wake_read:
                    try:
                        self._wake_read.recv(4096)
                    except OSError:
                        pass
                    continue
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with self._lock:
                        self._drop(key.fileobj)
            now = time.monotonic()
            with self._lock:
                for connection in [c for c, deadline in self._deadlines.items() if deadline <= now]:
                    self._drop(connection)
        with self._lock:
            for connection in list(self._deadlines):
                self._drop(connection)
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._wake()
        self._thread.join(timeout=5)


class _Server(http.server.HTTPServer):
    """An HTTP server on a bounded thread pool that answers 503 when it is full."""

    # Bursts of connections wait here (the kernel caps it at somaxconn)
    # until the accept loop answers them, with a reply or a 503.
    request_queue_size = 1024

    def __init__(self, address, handler, num_threads: int, max_inflight_bytes: int):
        self.num_threads = int(num_threads)
        self.body_budget = _BodyBudget(max_inflight_bytes)
        self._slots = threading.BoundedSemaphore(self.num_threads)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="rest")
        self._open: set[socket.socket] = set()
        self._lingering: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        body = rest_json.error_body(
            f"The server is busy: all {self.num_threads} REST connections are in use "
            "(`selfy serve --rest-threads`). Retry later."
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        self._refuser = _Refuser(head.encode("ascii") + body)
        super().__init__(address, handler)  # closes the refuser when the port is taken

    def process_request(self, request, client_address) -> None:
        if self._slots.acquire(blocking=False):
            self._pool.submit(self._serve, request, client_address)
        else:
            self._refuser.refuse(request)

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
                linger = request in self._lingering
                self._lingering.discard(request)
            if linger:
                self._refuser.linger(request)
            else:
                self.shutdown_request(request)
            self._slots.release()

    def linger_after_reply(self, request: socket.socket) -> None:
        """Hands `request` to the refusal thread once answered: its client may
        still be sending a body nobody reads, and a plain close would reset
        the connection before the client reads the reply."""
        with self._open_lock:
            self._lingering.add(request)

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
        self._refuser.close()


class ThreadedRestServer:
    """The REST front end on `http.server` threads; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests (its `limits.max_request_bytes` is
            the largest accepted body).
        port: TCP port; 0 picks a free one (see `port` after `start`).
        num_threads: connections served at once; more get 503. Default 128.
        timeout_s: limit for the wait for a request and its request line
            and headers together (an idle kept-alive connection included),
            then for the whole body. Default 30.
        max_inflight_bytes: request-body bytes held at once across all
            connections; a body that would exceed it gets 503 unread.
            Default 256 MiB; at least `predictor.limits.max_request_bytes`.

    Raises:
        PortInUseError: when another process listens on `port`.
    """

    def __init__(
        self,
        predictor: Predictor,
        port: int = 8501,
        num_threads: int = 128,
        timeout_s: float = 30.0,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
    ):
        check_server_settings(predictor, num_threads, timeout_s, max_inflight_bytes)
        handler = type("Handler", (_Handler,), {"predictor": predictor, "timeout": float(timeout_s)})
        try:
            self._server = _Server(
                (LOOPBACK_HOST, int(port)), handler, num_threads, max_inflight_bytes
            )
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
