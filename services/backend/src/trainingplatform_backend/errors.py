"""The one place that maps the backend's errors to gRPC status codes.

Code below the servicers raises these exceptions; the server interceptor turns them into a status with the
message (which must say what to fix and never contain a secret). Anything else becomes INTERNAL with a
generic message, and the exception is logged.
"""

from __future__ import annotations

import grpc
from sqlalchemy.exc import OperationalError
from trainingplatform_sdk.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    PlatformError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlatformError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
    "status_of",
]


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message to send for `error`."""
    if isinstance(error, PlatformError):
        return error.code, error.message
    if isinstance(error, OperationalError):
        return grpc.StatusCode.UNAVAILABLE, "the backend's database is unavailable; retry later"
    return grpc.StatusCode.INTERNAL, "internal error in the backend; the server log has the details"
