"""The one place where errors become HTTP answers: backend gRPC statuses, the SDK's errors and the dashboard's own.

Every JSON error is `{"error": {"code": "INVALID_ARGUMENT", "message": "...", "field": "spec.training.epochs"}}`;
`field` is the field path an INVALID_ARGUMENT or NOT_FOUND message starts with (the platform's messages name the
field first: "spec.training.epochs must be ...", "advanced_config.extra: unknown timm option ...", a trainer's
"dataset_config.path: '/data/x' does not exist on this trainer"), else null.
"""

from __future__ import annotations

import re

import grpc
from starlette.responses import JSONResponse
from trainingplatform_sdk.errors import PlatformError

__all__ = ["ApiError", "error_response", "field_of", "from_platform_error", "from_rpc_error"]

_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
    # The dashboard's own backend token was refused: the backend is misconfigured for the dashboard, which is not
    # the browser's fault (its session is fine), hence a bad gateway.
    grpc.StatusCode.UNAUTHENTICATED: 502,
    grpc.StatusCode.PERMISSION_DENIED: 502,
}

_FIELD = re.compile(
    r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\])*)"
    r"(?=:|\s+(?:is|must|contains|needs|holds|has|expected|cannot|should)\b)"
)


def field_of(message: str) -> str | None:
    """The field path a validation message starts with, or None.

    >>> field_of("spec.training.epochs must be between 1 and 10000; got 0")
    'spec.training.epochs'
    >>> field_of("advanced_config.extra: unknown timm option 'x'")
    'advanced_config.extra'
    >>> field_of("no trainer is configured for framework 'x'") is None
    True
    """
    match = _FIELD.match(message.strip())
    return match.group("field") if match else None


class ApiError(Exception):
    """An error answered as JSON with an HTTP status.

    Attributes:
        status: The HTTP status.
        code: The platform's error code (a gRPC status name: INVALID_ARGUMENT, NOT_FOUND, ...).
        message: What went wrong, safe to show (never a secret).
        field: The field the error concerns, or None.
    """

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def response(self) -> JSONResponse:
        """The JSON answer."""
        return error_response(self.status, self.code, self.message, self.field)


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": {"code": code, "message": message, "field": field}}, status_code=status)


def _api_error(code: grpc.StatusCode, details: str) -> ApiError:
    status = _HTTP_STATUS.get(code, 502)
    name = code.name
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        name = "BACKEND_REFUSED"
        details = f"the backend refused the dashboard's token ({code.name}): check TP_AUTH_TOKEN and READ_AUTH_TOKEN"
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        name = "UNAVAILABLE"
        details = f"the backend is unreachable or did not answer in time ({details or code.name})"
    elif status == 502:
        name = "BACKEND_ERROR"
        details = f"the backend failed: {code.name}: {details}"
    # A trainer's NOT_FOUND (a dataset path or checkpoint it does not have) names its field as INVALID_ARGUMENT does.
    field = field_of(details) if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND) else None
    return ApiError(status, name, details, field)


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    """The HTTP error for a failed backend call."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else ""
    return _api_error(code or grpc.StatusCode.UNKNOWN, details or "")


def from_platform_error(error: PlatformError) -> ApiError:
    """The HTTP error for an SDK error (a local check of a spec: the same message the backend would send)."""
    return _api_error(error.code, error.details)
