"""The trainer service's server interceptor: the platform's (`trainingplatform_sdk.server`) accepting only the
internal service token, and the trainer's mapping of errors to status codes.

Only one kind of caller exists here: a service holding INTERNAL_AUTH_TOKEN (the backend, operators' tools).
Health and reflection are public so that probes and grpcurl work without a token; they reveal nothing about jobs.
The token is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging

from trainingplatform_sdk.errors import UnauthenticatedError
from trainingplatform_sdk.server.interceptor import AuthInterceptor
from trainingplatform_sdk.server.status import status_mapping

__all__ = ["TokenInterceptor", "status_of"]

_log = logging.getLogger(__name__)

status_of = status_mapping("trainer service")
"""PlatformError keeps its code and message; anything else is INTERNAL."""


class TokenInterceptor(AuthInterceptor[None]):
    """Refuses calls without `authorization: Bearer <internal token>` (UNAUTHENTICATED) and turns exceptions
    raised by handlers into statuses (`status_of`).

    Args:
        internal_token: The service token callers must present; must not be empty.
    """

    def __init__(self, internal_token: str) -> None:
        if not internal_token:
            raise ValueError("the internal service token must not be empty")
        super().__init__(status_of=status_of, log=_log)
        self._token = internal_token.encode()

    async def authenticate(self, method: str, token: str) -> None:
        """Accepts the internal service token for every method.

        Raises:
            UnauthenticatedError: any other token.
        """
        if not hmac.compare_digest(token.encode(), self._token):
            raise UnauthenticatedError("unknown token: this trainer accepts only the internal service token")
