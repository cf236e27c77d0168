"""The errors a platform server's code raises for the caller to act on, each with its gRPC status code.

Shared by the backend and the trainer services; each keeps its one `status_of` that maps these (and its own
dependencies' failures) to the status sent, through the handler wrapper in `grpc_handlers`.
"""

from __future__ import annotations

import grpc

__all__ = [
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceError",
    "Unauthenticated",
    "Unavailable",
]


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
