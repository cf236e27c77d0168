"""The backend's server interceptor: the platform's (`trainingplatform_sdk.server`) with the backend's tokens, the
rights of each method, and the backend's one mapping of errors to status codes."""

from __future__ import annotations

import logging

import grpc
from sqlalchemy.exc import OperationalError
from trainingplatform_sdk.server import AuthInterceptor, status_mapping

from trainingplatform_backend import auth, metrics

log = logging.getLogger(__name__)

status_of = metrics.counting_refusals(
    status_mapping(
        "backend",
        {OperationalError: (grpc.StatusCode.UNAVAILABLE, "the backend's database is unavailable; retry later")},
    )
)
"""PlatformError keeps its code and message, a database that cannot be reached is UNAVAILABLE, anything else is
INTERNAL; each status given is counted (`tp_backend_refused_calls`)."""


class ServiceInterceptor(AuthInterceptor[auth.Principal]):
    """Authenticates the caller from its bearer token, checks its right to the method, runs the handler with the
    caller in `auth.CALLER`, and turns exceptions raised by the handlers into gRPC statuses (`status_of`)."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        super().__init__(status_of=status_of, log=log, caller=auth.CALLER)
        self._authenticator = authenticator

    async def authenticate(self, method: str, token: str) -> auth.Principal:
        """The caller presenting `token`, when it may call `method`.

        Raises:
            UnauthenticatedError: a token the backend does not know.
            PermissionDeniedError: the token's kind has no right to `method`.
        """
        principal = await self._authenticator.authenticate(token)
        auth.check_method(method, principal)
        return principal
