"""The server interceptor every service builds on: authenticates each call (unary and streaming) from its bearer
token and maps the handler's errors to statuses. A service supplies only who a token stands for."""

from __future__ import annotations

import abc
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import grpc

from trainingplatform_sdk.errors import PlatformError
from trainingplatform_sdk.server.handlers import wrap_handler
from trainingplatform_sdk.server.metadata import bearer_token, is_public
from trainingplatform_sdk.server.refusals import RefusalLog
from trainingplatform_sdk.server.status import StatusOf

__all__ = ["AuthInterceptor"]

CallerT = TypeVar("CallerT")


class AuthInterceptor(grpc.aio.ServerInterceptor, Generic[CallerT]):
    """Refuses calls whose `authorization: Bearer <token>` is missing, malformed or refused by `authenticate`,
    and turns exceptions raised by the handlers into statuses (`status_of`). Health and reflection are public.

    Refused calls are logged at INFO without the token: the first of each reason at once, the rest as one count
    per reason and minute (`refusals.RefusalLog`). Each is answered with the refusal's status before its request
    message is read or parsed (`handlers.wrap_handler`), so refused calls cost no memory for their requests.

    Args:
        status_of: The service's mapping of exceptions to statuses (`status.status_mapping`).
        log: Where refusals and unexpected errors are logged.
        caller: A context variable that holds what `authenticate` returned while the handler runs; None for none.
    """

    def __init__(
        self,
        *,
        status_of: StatusOf,
        log: logging.Logger,
        caller: contextvars.ContextVar[CallerT] | None = None,
    ) -> None:
        self._status_of = status_of
        self._log = log
        self._caller = caller
        self._refusals = RefusalLog(log)

    @abc.abstractmethod
    async def authenticate(self, method: str, token: str) -> CallerT:
        """The caller presenting `token` for `method` (`/package.Service/Method`).

        Raises:
            PlatformError: the call is refused (UnauthenticatedError, PermissionDeniedError); its message is logged
                and sent. Any other exception (the token could not be checked) refuses the call with the status
                `status_of` maps it to.
        """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler wrapped to refuse the call or run it with its caller; public methods unwrapped."""
        handler = await continuation(details)
        method = details.method
        if handler is None or is_public(method):
            return handler
        try:
            caller = await self.authenticate(method, bearer_token(details.invocation_metadata))
        except PlatformError as error:
            self._refusals.refused(method, error.message)
            return wrap_handler(handler, status_of=self._status_of, log=self._log, refusal=error)
        except Exception as error:
            # Refused through the service's one mapping, as a handler's error would be: an outage is UNAVAILABLE,
            # anything else INTERNAL (logged with its traceback), never UNKNOWN with the exception's text.
            return wrap_handler(handler, status_of=self._status_of, log=self._log, refusal=error)
        return wrap_handler(
            handler,
            status_of=self._status_of,
            log=self._log,
            caller=(self._caller, caller) if self._caller is not None else None,
        )
