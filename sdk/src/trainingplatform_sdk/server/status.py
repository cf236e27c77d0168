"""The one place that maps errors to gRPC status codes, for every server of the platform.

Code below the servicers raises `PlatformError`s; the interceptor sends each as its status code with its message
(which says what to fix and never contains a secret). A service may add the few foreign exceptions it knows
(the backend: its database being unreachable). Anything else becomes INTERNAL with a generic message, and the
exception is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import grpc

from trainingplatform_sdk.errors import PlatformError

__all__ = ["Status", "StatusOf", "status_mapping"]

Status = tuple[grpc.StatusCode, str]
"""A status code and the message sent with it."""

StatusOf = Callable[[BaseException], Status]
"""Maps an exception raised by a handler to the status to send."""


def status_mapping(service: str, extra: Mapping[type[BaseException], Status] | None = None) -> StatusOf:
    """The mapping of a service's errors to statuses.

    Args:
        service: How the INTERNAL message names the service ("backend": "internal error in the backend; ...").
        extra: Statuses for exceptions that are not `PlatformError`s, checked in order with `isinstance`.

    Returns:
        A function giving a `PlatformError` its own code and message, an exception of `extra` its status, and
        anything else INTERNAL with "internal error in the <service>; the server log has the details".
    """
    known = tuple((extra or {}).items())
    internal = (grpc.StatusCode.INTERNAL, f"internal error in the {service}; the server log has the details")

    def status_of(error: BaseException) -> Status:
        if isinstance(error, PlatformError):
            return error.code, error.message
        for error_type, status in known:
            if isinstance(error, error_type):
                return status
        return internal

    return status_of
