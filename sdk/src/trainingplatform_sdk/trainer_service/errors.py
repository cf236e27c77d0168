"""The one place that maps the trainer service's errors to gRPC status codes.

Code below the servicer raises these exceptions; the interceptor turns them into a status carrying the message,
which must say what to fix and never contain a secret. Any other exception becomes INTERNAL with a generic
message and is logged.
"""

from __future__ import annotations

import grpc

from trainingplatform_sdk.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PlatformError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
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
    return grpc.StatusCode.INTERNAL, "internal error in the trainer service; the server log has the details"
