"""The one error hierarchy of the platform's Python code.

Every error the SDK, the services and the clients raise on purpose is a `PlatformError`. Each class carries the
gRPC status code it stands for, so a server sends it as that status (`trainingplatform_sdk.server.status`) and a
client turns a status it receives back into the same class (`PlatformError.from_status`). Code that catches
`PlatformError` therefore catches every deliberate failure, local or remote, and nothing else.

    PlatformError
    ├── InvalidArgumentError          INVALID_ARGUMENT
    │   └── ConfigError               a bad value in a job's configs (also a ValueError)
    ├── NotFoundError                 NOT_FOUND
    ├── FailedPreconditionError       FAILED_PRECONDITION
    │   ├── StorageError              the artifact store is misconfigured or unreachable
    │   ├── TrackingError             the MLflow tracking server is misconfigured or unreachable
    │   ├── SpoolLockedError          another live process uses the same telemetry spool
    │   └── SpoolError                the telemetry spool directory cannot be made (also an OSError)
    ├── UnauthenticatedError          UNAUTHENTICATED
    ├── PermissionDeniedError         PERMISSION_DENIED
    ├── ResourceExhaustedError        RESOURCE_EXHAUSTED
    └── UnavailableError              UNAVAILABLE (and DEADLINE_EXCEEDED from a client's point of view)

Messages say what to fix and never contain a secret: servers send them to callers as they are.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "ConfigError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "PlatformError",
    "ResourceExhaustedError",
    "SpoolError",
    "SpoolLockedError",
    "StorageError",
    "TrackingError",
    "UnauthenticatedError",
    "UnavailableError",
    "cap_status_message",
    "quote",
]

QUOTE_CHARS = 100
"""How many characters of a client's value an error message quotes (`quote`)."""

MAX_STATUS_MESSAGE_BYTES = 2048
"""Longest status message a server sends, in UTF-8 bytes (`cap_status_message`). gRPC sends it percent-encoded in
a trailer, so even all non-ASCII it stays well under the 8 KiB a client accepts for metadata: a longer message
would reach the client as RESOURCE_EXHAUSTED "Stream removed" instead of the error."""


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)`, cut to about `limit` characters with a marker saying how long it was: how an error message
    echoes a client's input, so a huge value never makes a huge message.

    >>> quote("abc")
    "'abc'"
    >>> quote("x" * 1000, limit=10)
    "'xxxxxxxxx...[1000 characters]"
    """
    if isinstance(value, str | bytes):
        text, length, cut = repr(value[: limit + 1]), len(value), len(value) > limit
    else:
        text = repr(value)
        length, cut = len(text), False
    if len(text) <= limit + 2 and not cut:
        return text
    return f"{text[:limit]}...[{length} characters]"


def cap_status_message(message: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """`message` cut to at most `limit` UTF-8 bytes, ending with `...[truncated N bytes]` when cut."""
    if len(message) * 4 <= limit:
        return message
    encoded = message.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return message
    keep = limit - len(f"...[truncated {len(encoded)} bytes]".encode())
    return encoded[:keep].decode("utf-8", "ignore") + f"...[truncated {len(encoded) - keep} bytes]"


class PlatformError(Exception):
    """A deliberate failure of a platform call or component.

    Attributes:
        code: The gRPC status code the error stands for.
        message: What went wrong and what to fix; for an error received from a server, the server's message.
        details: The same as `message` (the name gRPC gives it).
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    """The status code of the class; an instance built by `from_status` may carry another (UNKNOWN, ...)."""

    _BY_CODE: ClassVar[dict[grpc.StatusCode, type[PlatformError]]] = {}

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self._remote = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # The first (most general) class declaring a code is the one a received status becomes.
        PlatformError._BY_CODE.setdefault(cls.code, cls)

    @property
    def details(self) -> str:
        """The message (gRPC's name for it)."""
        return self.message

    @classmethod
    def from_status(cls, code: grpc.StatusCode, details: str) -> PlatformError:
        """The error a client raises for a status a server sent; `str()` of it reads `CODE: details`."""
        error_class = _UNAVAILABLE_CODES.get(code) or PlatformError._BY_CODE.get(code, PlatformError)
        error = error_class(details, code=code)
        error._remote = True
        return error

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self._remote else self.message


class InvalidArgumentError(PlatformError):
    """The request is malformed: a missing field, a value out of range (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(PlatformError):
    """The named job, run or file does not exist (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPreconditionError(PlatformError):
    """Valid, but not possible in the current state, e.g. cancelling a completed job (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class UnauthenticatedError(PlatformError):
    """No token, or a token the server does not know (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(PlatformError):
    """A known token without the right for this call (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(PlatformError):
    """A limit was hit: a message too large, too many concurrent jobs (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(PlatformError):
    """The service is unreachable, shutting down, or did not answer in time; retry later (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE


class ConfigError(InvalidArgumentError, ValueError):
    """A job's config holds an unknown key, a wrong type or a value out of range; the message names the field."""


class StorageError(FailedPreconditionError, RuntimeError):
    """The artifact store is misconfigured or unreachable; the message names the setting to fix."""


class TrackingError(FailedPreconditionError, RuntimeError):
    """MLflow tracking is misconfigured or unreachable; the message names the setting to fix."""


class SpoolLockedError(FailedPreconditionError, RuntimeError):
    """Another live process holds the spool directory of the same job."""


class SpoolError(FailedPreconditionError, OSError):
    """The telemetry spool directory cannot be created or opened; the message names the path and the setting."""


# A client sees a deadline that passed as the service being unavailable: both mean "retry later".
_UNAVAILABLE_CODES: dict[grpc.StatusCode, type[PlatformError]] = {grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError}
