"""The one error type the serving code raises for a request it cannot answer.

Codes are the gRPC status codes TF Serving uses; the REST front end maps
them to HTTP statuses.
"""

from __future__ import annotations

import errno

import grpc

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 503,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
}


class ServingError(Exception):
    """A request failed with a gRPC status `code` and a message for the client.

    Args:
        code: a `grpc.StatusCode`.
        message: what went wrong and, where it helps, what was expected.
        http_status: the REST status when it differs from the code's usual
            one (413 for a body over the size cap).
    """

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        """The HTTP status for REST: the one given, else TF Serving's for `code`."""
        return self._http_status or _HTTP_STATUS.get(self.code, 500)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


class PortInUseError(OSError):
    """A server port is taken by another process (raised before serving).

    Args:
        message: names the port and the flag that changes it.
    """

    def __init__(self, message: str):
        super().__init__(errno.EADDRINUSE, message)

    def __str__(self) -> str:
        return self.strerror
