"""The one place that maps the backend's errors to gRPC status codes.

Code below the servicers raises these exceptions; the server interceptor turns them into a status with the
message (which must say what to fix and never contain a secret). Anything else becomes INTERNAL with a
generic message, and the exception is logged.
"""

from __future__ import annotations

import grpc
from sqlalchemy.exc import OperationalError


class ServiceError(Exception):
    """An error the caller can act on, carried to the client as a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed: a missing field, a value out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """The named job (or run) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is valid but not in the job's current state (an invalid status transition)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ServiceError):
    """No token, or a token the server does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """A known token without the right for this call (another job's telemetry token, a read-only token)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ServiceError):
    """A limit was hit (a message too large, too many concurrent jobs)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    """The server is shutting down or a dependency is unreachable; the caller should retry."""

    code = grpc.StatusCode.UNAVAILABLE


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message to send for `error`."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    if isinstance(error, OperationalError):
        return grpc.StatusCode.UNAVAILABLE, "the backend's database is unavailable; retry later"
    return grpc.StatusCode.INTERNAL, "internal error in the backend; the server log has the details"
