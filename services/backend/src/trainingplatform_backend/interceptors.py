"""The server interceptor: authenticates every call (unary and streaming) and maps errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from trainingplatform_sdk.server.handlers import wrap_handler

from trainingplatform_backend import auth
from trainingplatform_backend.errors import PlatformError, status_of

log = logging.getLogger(__name__)


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates the caller from metadata, checks its right to the method, and turns exceptions raised by
    the handlers into gRPC statuses (PlatformError keeps its code and message; anything else is INTERNAL)."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        self._authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(auth.PUBLIC_METHOD_PREFIXES):
            return handler
        header = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode()
                break
        try:
            principal = await self._authenticator.authenticate(header)
            auth.check_method(method, principal)
        except PlatformError as error:
            log.info("refused %s: %s", method, error.message)
            return _wrap(handler, None, error)
        return _wrap(handler, principal, None)


def _wrap(handler: grpc.RpcMethodHandler, principal: auth.Principal | None, refusal: PlatformError | None) -> Any:
    """A handler of the same shape that refuses the call, or runs it with `principal` as the caller."""
    return wrap_handler(
        handler,
        status_of=status_of,
        log=log,
        refusal=refusal,
        caller=(auth.CALLER, principal) if principal is not None else None,
    )
