"""The one place that maps the trainer service's errors to gRPC status codes.

Code below the servicer raises these exceptions; the interceptor turns them into a status carrying the message,
which must say what to fix and never contain a secret. Any other exception becomes INTERNAL with a generic
message and is logged.
"""

from __future__ import annotations

import grpc

__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
    "status_of",
]


class ServiceError(Exception):
    """An error the caller can act on, carried to the client as a gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ServiceError):
    """The request is malformed: a missing field, an unknown model, a value out of range."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    """The named run, dataset path or model file does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    """The request is valid but the trainer cannot act on it as configured."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """The service already runs its maximum of concurrent jobs."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServiceError):
    """No token, or not the internal service token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(ServiceError):
    """The service is shutting down; the caller should retry on another trainer or later."""

    code = grpc.StatusCode.UNAVAILABLE


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message to send for `error`."""
    if isinstance(error, ServiceError):
        return error.code, error.message
    return grpc.StatusCode.INTERNAL, "internal error in the trainer service; the server log has the details"
