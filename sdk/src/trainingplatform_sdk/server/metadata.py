"""What a server reads from a call's metadata: the `authorization: Bearer <token>` header, and which methods are
public (callable without it).

No token is ever logged or put in a message.
"""

from __future__ import annotations

from collections.abc import Sequence

from trainingplatform_sdk.errors import UnauthenticatedError

__all__ = ["PUBLIC_METHOD_PREFIXES", "Metadata", "bearer_token", "is_public"]

Metadata = Sequence[tuple[str, str | bytes]] | None
"""A call's invocation metadata, as `grpc.HandlerCallDetails.invocation_metadata` holds it."""

PUBLIC_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Probes and tooling (health checks, grpcurl) call these without a token; they reveal nothing about jobs."""


def is_public(method: str) -> bool:
    """Whether `method` (`/package.Service/Method`) may be called without a token."""
    return method.startswith(PUBLIC_METHOD_PREFIXES)


#: HTTP's optional white space around a header value (RFC 9110, 5.6.3): SP and HTAB, nothing else.
_OWS = " \t"


def bearer_token(invocation_metadata: Metadata) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata, without surrounding SP and HTAB.

    The scheme is matched without regard to case. Whether the server knows the token is the caller's check. Only
    HTTP's white space is ignored: a token with any other character outside printable ASCII (a no-break space, an
    em space, a byte that is not UTF-8) is refused, not trimmed to the token it would be without it.

    Raises:
        UnauthenticatedError: the metadata is missing, given more than once (which one counted would depend on their
            order, which a proxy adding one may decide), not of the form `Bearer <token>`, or its token holds a
            character outside printable ASCII.
    """
    headers = [value for key, value in invocation_metadata or () if key == "authorization"]
    if len(headers) > 1:
        raise UnauthenticatedError("more than one authorization header")
    header = ""
    if headers:
        header = headers[0] if isinstance(headers[0], str) else headers[0].decode("latin-1")
    if not header:
        raise UnauthenticatedError("missing `authorization: Bearer <token>` metadata")
    scheme, _, token = header.partition(" ")
    token = token.strip(_OWS)
    if scheme.lower() != "bearer" or not token:
        raise UnauthenticatedError("the authorization metadata must be `Bearer <token>`")
    if not all(" " <= char <= "~" for char in token):
        raise UnauthenticatedError("the bearer token must be printable ASCII (only SP and HTAB around it are ignored)")
    return token
