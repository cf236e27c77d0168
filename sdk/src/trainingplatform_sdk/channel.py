"""The one channel factory of the platform's clients: address parsing, TLS, options and the auth metadata.

The TrainingLogger, the typed clients, the CLI and the backend's dispatcher all open their channels here."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

# Read by gRPC when it is imported. Our streams are always active, so gRPC's fork handlers would be skipped anyway
# (with a log line per fork, i.e. per DataLoader worker); a forked child never uses the parent's channel.
# Callers that import grpc first, or set the variable, keep their choice.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Sequence
from typing import Any

import grpc

_LOG = logging.getLogger("trainingplatform_sdk.logger")

_PLAINTEXT_SCHEMES = {"grpc", "http"}
_TLS_SCHEMES = {"https", "grpcs"}


@dataclass(frozen=True)
class BackendAddress:
    """Where the backend listens.

    Attributes:
        target: The gRPC target, `host:port` (IPv6 hosts in brackets).
        tls: Whether the channel uses TLS.
    """

    target: str
    tls: bool


def parse_backend_address(address: str) -> BackendAddress:
    """Parses BACKEND_API_URL: `host:port`, `grpc://host:port` (plaintext) or `https://host[:port]` (TLS).

    `http://` is read as plaintext and `grpcs://` as TLS; a URL path (left over from the old HTTP API) is ignored.

    Raises:
        ValueError: The address has no host, no port where one is needed, or an unknown scheme.
    """
    text = address.strip()
    if not text:
        raise ValueError("backend address is empty")
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in _TLS_SCHEMES:
            tls = True
        elif scheme in _PLAINTEXT_SCHEMES:
            tls = False
        else:
            raise ValueError(f"backend address {address!r}: scheme must be grpc://, http://, https:// or grpcs://")
        if parts.path not in ("", "/"):
            _LOG.warning("backend address %r: ignoring the path %r (gRPC has none)", address, parts.path)
    else:
        parts = urlsplit("//" + text)
        tls = False
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"backend address {address!r}: invalid port") from exc
    host = parts.hostname
    if not host:
        raise ValueError(f"backend address {address!r} has no host")
    if port is None:
        if not tls:
            raise ValueError(f"backend address {address!r} needs a port (host:port)")
        port = 443
    if ":" in host:
        host = f"[{host}]"
    return BackendAddress(target=f"{host}:{port}", tls=tls)


def open_channel(
    address: str | BackendAddress,
    *,
    options: Sequence[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.Channel:
    """Opens a (synchronous) channel to a platform service.

    Args:
        address: `host:port`, `grpc://host:port` (plaintext) or `https://host[:port]` (TLS), or a parsed address.
        options: gRPC channel arguments.
        root_certificates: PEM roots for TLS; None uses the CA bundle named by TP_TLS_CA_FILE, else the system roots.
        private_key: PEM client key, for mutual TLS.
        certificate_chain: PEM client certificate chain, for mutual TLS.

    Raises:
        ValueError: The address is malformed.
        OSError: TP_TLS_CA_FILE cannot be read.
    """
    parsed = _parsed(address)
    if not parsed.tls:
        return grpc.insecure_channel(parsed.target, options=list(options))
    credentials = _credentials(root_certificates, private_key, certificate_chain)
    return grpc.secure_channel(parsed.target, credentials, options=list(options))


def open_aio_channel(
    address: str | BackendAddress,
    *,
    options: Sequence[tuple[str, Any]] = (),
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.aio.Channel:
    """Opens an asyncio channel to a platform service; the arguments are those of `open_channel`."""
    parsed = _parsed(address)
    if not parsed.tls:
        return grpc.aio.insecure_channel(parsed.target, options=list(options))
    credentials = _credentials(root_certificates, private_key, certificate_chain)
    return grpc.aio.secure_channel(parsed.target, credentials, options=list(options))


def _parsed(address: str | BackendAddress) -> BackendAddress:
    return parse_backend_address(address) if isinstance(address, str) else address


def _credentials(
    root_certificates: bytes | None, private_key: bytes | None, certificate_chain: bytes | None
) -> grpc.ChannelCredentials:
    if root_certificates is None:
        ca_file = os.environ.get("TP_TLS_CA_FILE")
        if ca_file:
            with open(ca_file, "rb") as handle:
                root_certificates = handle.read()
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain
    )


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call."""
    return (("authorization", f"Bearer {token}"),)
