"""Backend address parsing, the gRPC channel (TLS, keepalive, message limits) and the auth metadata."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

# Read by gRPC when it is imported. Our streams are always active, so gRPC's fork handlers would be skipped anyway
# (with a log line per fork, i.e. per DataLoader worker); a forked child never uses the parent's channel.
# Callers that import grpc first, or set the variable, keep their choice.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc

from trainingplatform_sdk.settings import SERVER_MAX_MESSAGE_BYTES, LoggerSettings

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


def channel_options(settings: LoggerSettings) -> list[tuple[str, int]]:
    """The channel arguments: keepalive matched to the backend's ping policy, message limits, fast reconnects."""
    return [
        ("grpc.keepalive_time_ms", settings.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_permit_without_calls)),
        # 0 lets pings go out on an idle stream; the server permits one every 10 s, we send one every 30 s.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_send_message_length", SERVER_MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", SERVER_MAX_MESSAGE_BYTES),
        # gRPC's own reconnect backoff (up to 120 s by default) would keep a restarted backend unused for minutes.
        ("grpc.initial_reconnect_backoff_ms", int(settings.reconnect_initial_backoff_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(settings.reconnect_initial_backoff_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(settings.reconnect_max_backoff_s * 1000)),
    ]


def create_channel(address: BackendAddress, settings: LoggerSettings) -> grpc.Channel:
    """Opens a channel to the backend; TLS uses the system roots, or the CA bundle named by TP_TLS_CA_FILE."""
    options = channel_options(settings)
    if not address.tls:
        return grpc.insecure_channel(address.target, options=options)
    root_certificates = None
    ca_file = os.environ.get("TP_TLS_CA_FILE")
    if ca_file:
        with open(ca_file, "rb") as handle:
            root_certificates = handle.read()
    credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
    return grpc.secure_channel(address.target, credentials, options=options)


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call."""
    return (("authorization", f"Bearer {token}"),)
