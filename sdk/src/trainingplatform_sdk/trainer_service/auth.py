"""The server interceptor: checks the internal service token on every call and maps errors to status codes.

Only one kind of caller exists here: a service holding INTERNAL_AUTH_TOKEN (the backend, operators' tools).
Health and reflection are public so that probes and grpcurl work without a token; they reveal nothing about jobs.
The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from trainingplatform_sdk.server.handlers import wrap_handler
from trainingplatform_sdk.trainer_service.errors import PlatformError, UnauthenticatedError, status_of

__all__ = ["PUBLIC_METHOD_PREFIXES", "TokenInterceptor"]

_log = logging.getLogger(__name__)

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <internal token>` (UNAUTHENTICATED) and turns exceptions
    raised by handlers into statuses (PlatformError keeps its code and message; anything else is INTERNAL).

    Args:
        internal_token: The service token callers must present; must not be empty.
    """

    def __init__(self, internal_token: str) -> None:
        if not internal_token:
            raise ValueError("the internal service token must not be empty")
        self._token = internal_token.encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(PUBLIC_METHOD_PREFIXES):
            return handler
        header = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
                break
        refusal = self._check(header)
        if refusal is not None:
            _log.info("refused %s: %s", details.method, refusal.message)
        return _wrap(handler, refusal)

    def _check(self, header: str) -> PlatformError | None:
        if not header:
            return UnauthenticatedError("missing `authorization: Bearer <token>` metadata")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return UnauthenticatedError("the authorization metadata must be `Bearer <token>`")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            return UnauthenticatedError("unknown token: this trainer accepts only the internal service token")
        return None


def _wrap(handler: grpc.RpcMethodHandler, refusal: PlatformError | None) -> Any:
    """A handler of the same shape that aborts with `refusal`, or runs the original and maps its errors."""
    return wrap_handler(handler, status_of=status_of, log=_log, refusal=refusal)
