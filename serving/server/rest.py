"""TF Serving's REST API on aiohttp's HTTP server (`selfy serve`'s default REST front end).

The routes, replies and caps below are shared with `rest_threaded` (the
`http.server` front end). Loopback only.

Routes (`[...]` optional; one of `/versions/<v>` or `/labels/<l>`):

- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]` → model status
- `GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata` → signatures
- `POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` → predictions

Errors answer `{"error": "..."}` with 400 (bad request), 404 (unknown model,
version or route), 408 (body not received in time), 413 (body over the size
cap), 501 (unsupported method) or 503 (overloaded), and the server keeps
serving. Bodies larger than the size cap are refused from their
`Content-Length` without being read.

One asyncio event loop, on its own thread, runs aiohttp's HTTP/1.1 server
(parsing, keep-alive, lingering close); decoding, prediction and encoding
run on a pool of `num_threads` threads, never on the loop. A connection
must send its request line and headers within `timeout_s` of the server
starting to wait for them (aiohttp's `keepalive_timeout`, which also
closes an idle kept-alive connection), then its whole body within
`timeout_s`, and must take each reply within `timeout_s`: each is one
deadline, however slowly the bytes trickle. At most `num_threads`
connections are open at once; one beyond them gets 503 with `Retry-After`
at once and costs no thread. Request bodies held at once are bounded in
total (`max_inflight_bytes`, 503 beyond it). While a server runs, the
process's GIL switch interval is 0.5 ms (`sys.setswitchinterval`; the
previous value comes back when the last server stops), so that the loop
is not kept waiting behind threads decoding or predicting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import re
import socket
import sys
import threading
import weakref
from http import HTTPStatus
from typing import Mapping

import grpc
from aiohttp import HttpVersion11, web, web_protocol, web_server

from serving.errors import PortInUseError, ServingError, invalid_argument, not_found
from serving.server import rest_json, status
from serving.server.predictor import Predictor

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
DEFAULT_MAX_INFLIGHT_BYTES = 256 << 20

# Seconds an answered connection is still read (and the bytes dropped) so
# that its client, maybe still sending a body nobody reads, gets the reply
# instead of a reset.
_LINGER_S = 2.0
# Refused connections that linger at once; beyond them they are closed at once.
_MAX_LINGERING_REFUSALS = 1024
_SERVER_HEADER = "selfy-serving"
# The event loop thread does all the socket reads and writes. Each time it
# wakes it waits for the GIL, and a thread decoding JSON or predicting
# keeps the GIL for up to the switch interval (Python's default: 5 ms), so
# with 32 busy clients the loop fell behind and predictions went 0.82x the
# threaded server's. At 0.5 ms the loop keeps up (benchmarks/README.md,
# "REST on aiohttp").
_SWITCH_INTERVAL_S = 0.0005
_READ_BUFFER_BYTES = 256 << 10

_ROUTE = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:[a-zA-Z]+)?/?$"
)

_ASCII_DIGITS = re.compile(r"[0-9]+")


def _parse_route(path: str) -> tuple[str, int | None, str | None, str | None]:
    match = _ROUTE.match(path.split("?", 1)[0])
    if match is None:
        raise not_found(f"Malformed request: {path}")
    version = match.group("version")
    if version is not None:
        # str.isdigit() also accepts digits int() refuses, such as "²".
        if not _ASCII_DIGITS.fullmatch(version):
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    return match.group("name"), version, match.group("label"), match.group("suffix")


# The API itself, shared with the `http.server` front end (`rest_threaded`).


def answer_get(predictor: Predictor, path: str) -> bytes:
    """The body of a status or metadata request."""
    name, version, label, suffix = _parse_route(path)
    if suffix not in (None, "/metadata"):
        raise not_found(f"Malformed request: GET {path}")
    predictor.check_model_name(name)
    if suffix is None:
        if label is not None:
            version = predictor.version(name, label=label).version
        body = status.to_json(status.model_status_response(predictor.store, version))
    else:
        loaded = predictor.version(name, version, label)
        body = status.to_json(status.model_metadata_response(name, loaded))
    return rest_json.dumps(body)


def check_predict_route(path: str) -> None:
    suffix = _parse_route(path)[3]
    if suffix != ":predict":
        if suffix in (":classify", ":regress"):
            raise invalid_argument(
                f"{suffix[1:]} is not supported by this model: it has only "
                "predict signatures. Use :predict."
            )
        raise not_found(f"Malformed request: POST {path}")


def answer_predict(predictor: Predictor, path: str, body: bytearray) -> bytes:
    """The body of a predict request (decoding, prediction and encoding)."""
    name, version, label, _ = _parse_route(path)
    document = rest_json.parse_body(body)
    body.clear()  # its decoded form is all that is needed from here on
    loaded, signature = predictor.resolve(name, rest_json.signature_name(document), version, label)
    inputs, request_format = rest_json.request_inputs(document, signature.inputs)
    del document
    outputs = predictor.run(loaded, signature, inputs)
    return rest_json.dumps(rest_json.predict_response(outputs, request_format))


def declared_length(headers: Mapping[str, str], max_request_bytes: int) -> int:
    """The body's declared length, checked against the size cap (body unread)."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        raise invalid_argument("Chunked request bodies are not supported; send Content-Length.")
    length_header = headers.get("Content-Length")
    if length_header is None or not _ASCII_DIGITS.fullmatch(length_header.strip()):
        raise invalid_argument(
            f"A valid Content-Length header is required. Received: {length_header!r}."
        )
    length = int(length_header)
    if length > max_request_bytes:
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Request body of {length} bytes exceeds the limit of "
            f"{max_request_bytes} bytes (`selfy serve --max-request-mb`). "
            "Send JPEG frames (serving_default) or fewer clips per request.",
            http_status=413,
        )
    return length


def check_server_settings(predictor: Predictor, num_threads: int, timeout_s: float,
                          max_inflight_bytes: int) -> None:
    """The settings both REST front ends take: threads, timeout and the body budget."""
    if num_threads < 1 or timeout_s <= 0:
        raise ValueError(
            "`num_threads` must be at least 1 and `timeout_s` positive. Received: "
            f"num_threads={num_threads}, timeout_s={timeout_s}."
        )
    if max_inflight_bytes < predictor.limits.max_request_bytes:
        raise ValueError(
            "`max_inflight_bytes` must be at least the largest request body "
            f"({predictor.limits.max_request_bytes} bytes), or no such body could be "
            f"read. Received: max_inflight_bytes={max_inflight_bytes}. Raise "
            "--rest-max-inflight-mb or lower --max-request-mb."
        )


def _json_response(code: int, body: bytes, close: bool = False) -> web.Response:
    response = web.Response(status=code, body=body, content_type="application/json")
    response.headers["Server"] = _SERVER_HEADER
    if code == 503:
        response.headers["Retry-After"] = "1"
    if close:
        response.force_close()  # sends `Connection: close`
    return response


class _BodyBudget:
    """Request-body bytes the server holds at once, across all connections.

    A body's bytes are reserved from its `Content-Length` before it is
    read and released once its reply is ready, so the JSON documents and
    arrays decoded from bodies are bounded in total, not only per request.
    Used on the event loop only.

    Args:
        capacity: most body bytes in flight.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._used = 0

    def reserve(self, num_bytes: int) -> bool:
        if self._used + num_bytes > self.capacity:
            return False
        self._used += num_bytes
        return True

    def release(self, num_bytes: int) -> None:
        self._used -= num_bytes


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler with its own error replies in TF Serving's JSON."""

    def __init__(self, manager: "_HttpServer", **kwargs):
        super().__init__(manager, **kwargs)
        self._http_server = manager

    def connection_lost(self, exc: BaseException | None) -> None:
        self._http_server.open_connections.discard(self)
        super().connection_lost(exc)

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        # Malformed requests (bad request line, header or Content-Length)
        # are routine: no traceback in the log.
        logger.debug("bad request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("a reply was sent in part; the connection is closed")
        # A request that could not be parsed has no version of its own and
        # aiohttp answers it as HTTP/1.0; answer as the HTTP/1.1 server this
        # is, closing the connection. `request.version` is cached in
        # `_cache` (aiohttp 3.14); elsewhere the reply stays HTTP/1.0.
        cache = getattr(request, "_cache", None)
        if isinstance(cache, dict):
            cache["version"] = HttpVersion11
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "Error"
        if message:
            # The parser's first line; the rest quotes the raw bytes with a caret.
            text = f"{text}: {str(message).splitlines()[0].rstrip(':')}"
        return _json_response(status, rest_json.error_body(text), close=True)


class _Refusal(asyncio.Protocol):
    """Answers a connection beyond the limit with 503, without waiting on it.

    The reply fits a fresh socket's buffer; then what the client sends is
    dropped until it closes or `_LINGER_S` passes (closing a socket with
    unread data resets the connection, and the client may lose the reply).
    """

    def __init__(self, server: "_HttpServer"):
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        transport.write(self._server.busy_reply)
        if len(self._server.refusals) >= _MAX_LINGERING_REFUSALS or not transport.can_write_eof():
            transport.close()
            return
        self._server.refusals.add(self)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def close(self) -> None:
        self._transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.refusals.discard(self)
        if self._timer is not None:
            self._timer.cancel()


class _HttpServer(web_server.Server):
    """aiohttp's low-level server with a connection limit answered with 503 at once."""

    def __init__(self, handler, *, max_connections: int, **kwargs):
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        # Handlers made and not yet closed (a handler whose connection never
        # opened goes away with its last reference).
        self.open_connections: weakref.WeakSet = weakref.WeakSet()
        self.refusals: set[_Refusal] = set()  # lingering after their 503
        body = rest_json.error_body(
            f"The server is busy: all {max_connections} REST connections are in use "
            "(`selfy serve --rest-threads`). Retry later."
        )
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n"
            f"Server: {_SERVER_HEADER}\r\n\r\n"
        )
        self.busy_reply = head.encode("ascii") + body

    def __call__(self) -> asyncio.Protocol:
        if len(self.open_connections) >= self.max_connections:
            return _Refusal(self)
        handler = _RequestHandler(self, loop=self._loop, **self._kwargs)
        self.open_connections.add(handler)
        return handler


class _Api:
    """Answers one request on the event loop; the work runs on `pool`."""

    def __init__(self, predictor: Predictor, pool: concurrent.futures.Executor,
                 timeout_s: float, max_inflight_bytes: int):
        self.predictor = predictor
        self.pool = pool
        self.timeout_s = timeout_s
        self.body_budget = _BodyBudget(max_inflight_bytes)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        # The path as sent, percent-escapes kept, as the routes expect.
        path = request.raw_path
        close = False
        try:
            if request.method == "GET":
                if _parse_route(path)[3] is None:
                    # A status: a few dict reads under a short lock, answered here.
                    body = answer_get(self.predictor, path)
                else:
                    body = await self._in_pool(answer_get, self.predictor, path)
            elif request.method == "POST":
                body = await self._post(request, path)
            else:
                close = True
                raise ServingError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"Unsupported method ({request.method!r}): Server does not support this operation",
                    http_status=501,
                )
            response = _json_response(200, body)
        except ServingError as error:
            close = close or error.http_status in (408, 413) or not request.content.is_eof()
            response = _json_response(error.http_status, rest_json.error_body(error.message), close)
        except ConnectionError:  # the client went away: nothing to answer
            raise
        except Exception as error:  # keep serving whatever one request did
            logger.exception("internal error answering %s %s", request.method, path)
            response = _json_response(500, rest_json.error_body(f"Internal error: {error}"), close=True)
        return await self._send(request, response)

    async def _in_pool(self, function, *args) -> bytes:
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    async def _post(self, request: web.BaseRequest, path: str) -> bytes:
        check_predict_route(path)
        length = declared_length(request.headers, self.predictor.limits.max_request_bytes)
        if not self.body_budget.reserve(length):
            raise ServingError(
                grpc.StatusCode.UNAVAILABLE,
                f"The server is busy: request bodies in flight would exceed "
                f"{self.body_budget.capacity} bytes (`selfy serve "
                "--rest-max-inflight-mb`). Retry later.",
            )
        try:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_body(request, length)
            return await self._in_pool(answer_predict, self.predictor, path, body)
        finally:
            self.body_budget.release(length)

    async def _read_body(self, request: web.BaseRequest, length: int) -> bytearray:
        body, received = bytearray(length), 0
        try:
            async with asyncio.timeout(self.timeout_s):  # one deadline for the whole body
                while received < length:
                    chunk = await request.content.readany()
                    if not chunk:
                        raise invalid_argument(
                            f"The connection closed after {received} of {length} body bytes."
                        )
                    body[received:received + len(chunk)] = chunk
                    received += len(chunk)
        except TimeoutError:
            raise ServingError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"Request body not received within {self.timeout_s:g} s "
                f"({received} of {length} bytes; `selfy serve --rest-timeout`).",
                http_status=408,
            ) from None
        return body  # json.loads reads a bytearray as it is: no copy

    async def _send(self, request: web.BaseRequest, response: web.Response) -> web.Response:
        # aiohttp waits for a slow reader without limit: one deadline for the reply.
        try:
            async with asyncio.timeout(self.timeout_s):
                await response.prepare(request)
                await response.write_eof()
        except TimeoutError:
            logger.debug("reply to %s not taken within %g s", request.remote, self.timeout_s)
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the client did not read its reply") from None
        return response


class _SwitchInterval:
    """Lowers the GIL switch interval while at least one server runs."""

    _lock = threading.Lock()
    _users = 0
    _previous = 0.0

    @classmethod
    def acquire(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._previous = sys.getswitchinterval()
                sys.setswitchinterval(min(cls._previous, _SWITCH_INTERVAL_S))
            cls._users += 1

    @classmethod
    def release(cls) -> None:
        with cls._lock:
            cls._users -= 1
            if cls._users == 0:
                sys.setswitchinterval(cls._previous)


class AiohttpRestServer:
    """The REST front end; binds to 127.0.0.1 only.

    Args:
        predictor: answers the requests (its `limits.max_request_bytes` is
            the largest accepted body).
        port: TCP port; 0 picks a free one (see `port`).
        num_threads: connections open at once (more get 503) and threads
            decoding and predicting. Default 128.
        timeout_s: limit for the wait for a request and its request line
            and headers together (an idle kept-alive connection included),
            then for the whole body, then for the reply. Default 30.
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
        self.num_threads = int(num_threads)
        self.timeout_s = float(timeout_s)
        try:
            # Bursts of connections wait in the backlog (the kernel caps it
            # at somaxconn) until the loop answers them, with a reply or a 503.
            self._socket = socket.create_server((LOOPBACK_HOST, int(port)), backlog=1024)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"REST port {port} is already in use on {LOOPBACK_HOST}. Stop the other "
                    "server or choose another port with --rest-port (0: any free port)."
                ) from error
            raise
        self._pool = concurrent.futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="rest")
        self._api = _Api(predictor, self._pool, self.timeout_s, max_inflight_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: _HttpServer | None = None
        self._listener: asyncio.Server | None = None

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    def start(self) -> None:
        _SwitchInterval.acquire()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rest-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=30)
        logger.info("REST API on http://%s:%d", LOOPBACK_HOST, self.port)

    async def _listen(self) -> None:
        self._http = _HttpServer(
            self._api,
            max_connections=self.num_threads,
            # The deadline for a request line and headers, from the start
            # of the wait (a new or kept-alive connection).
            keepalive_timeout=self.timeout_s,
            lingering_time=_LINGER_S,
            # A body arrives in fewer, larger chunks (asyncio reads up to
            # 256 KiB at a time; aiohttp's default buffer is 64 KiB).
            read_bufsize=_READ_BUFFER_BYTES,
            access_log=None,
        )
        self._listener = await asyncio.get_running_loop().create_server(
            self._http, sock=self._socket, backlog=1024
        )

    async def _close(self) -> None:
        self._listener.close()
        for refusal in list(self._http.refusals):
            refusal.close()
        await self._http.shutdown(timeout=1.0)
        # Requests still waiting on the pool: cancelled, so that their
        # results, arriving later, go nowhere.
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        if self._thread is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
            except (concurrent.futures.TimeoutError, RuntimeError) as error:
                logger.debug("REST shutdown did not finish: %r", error)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None
            self._loop.close()
            _SwitchInterval.release()
        self._socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
