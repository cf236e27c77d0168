"""The channel arguments of every gRPC server of the platform.

Keepalive, agreed with the SDK's client settings (docs/architecture.md keeps both together):
- the server pings an idle connection every 60 s and drops it when no answer comes within 20 s;
- it accepts client pings as often as every 10 s, with or without an active call; the SDK pings every 30 s,
  so a trainer's stream is never closed with GOAWAY "too_many_pings", and can stay open for days.

Memory: the server never probes the bandwidth-delay product to grow its HTTP/2 receive windows
(`grpc.http2.bdp_probe` off). With it, a fast client makes every new stream's window grow to megabytes, and a
flood of large requests that are refused unread (no token) still fills the server with megabytes per stream in
flight; without it a stream's window is 64 KiB until the server reads a message, then that message's size, so a
request the server reads still arrives at full speed. Each client connection may open at most
`max_concurrent_streams` calls at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; further calls wait on the client).

One listener per port (`grpc.so_reuseport` off): gRPC sets SO_REUSEPORT by default, so a second server on a port
already served "succeeds" and the kernel spreads connections over both at random. With it off, binding a port
that is in use fails, and the server says so at start. Only the worker processes of one `tp-backend --workers N`
turn it on (`reuse_port`), to share their port on purpose; their supervisor checks first that nothing else holds it.
"""

from __future__ import annotations

__all__ = [
    "KEEPALIVE_TIMEOUT_MS",
    "KEEPALIVE_TIME_MS",
    "MAX_PING_STRIKES",
    "MIN_CLIENT_PING_INTERVAL_MS",
    "server_options",
]

KEEPALIVE_TIME_MS = 60_000
"""How long a connection may stay idle before the server pings it."""

KEEPALIVE_TIMEOUT_MS = 20_000
"""How long the server waits for the answer to its ping before it drops the connection."""

MIN_CLIENT_PING_INTERVAL_MS = 10_000
"""The shortest interval between client pings the server accepts (the SDK pings every 30 s)."""

MAX_PING_STRIKES = 2
"""How many too-early client pings the server tolerates before it closes with GOAWAY "too_many_pings"."""


def server_options(
    max_message_bytes: int | None = None,
    max_connection_age_s: float = 0,
    connection_age_grace_s: float = 0,
    max_concurrent_streams: int | None = None,
    *,
    reuse_port: bool = False,
) -> list[tuple[str, int]]:
    """Channel arguments of a server: message size limits, keepalive, connection age, HTTP/2 windows (see the
    module docstring), streams per connection, and one listener per port (`grpc.so_reuseport` off unless
    `reuse_port`).

    Args:
        max_message_bytes: The largest message received or sent; None keeps gRPC's defaults.
        max_connection_age_s: When above 0, connections are closed (GOAWAY) after this long, so clients
            reconnect and spread over the replicas behind a load balancer; 0 keeps them open.
        connection_age_grace_s: How long calls still open on a connection that reached its age may go on.
        max_concurrent_streams: The most calls open at once on one client connection; None keeps gRPC's default
            (no limit).
        reuse_port: Whether other processes may listen on the same port (SO_REUSEPORT; the kernel spreads
            connections over them): only for worker processes of one server that share the port on purpose.

    Returns:
        The `options` of `grpc.aio.server`.
    """
    options: list[tuple[str, int]] = []
    if max_message_bytes is not None:
        options.append(("grpc.max_receive_message_length", max_message_bytes))
        options.append(("grpc.max_send_message_length", max_message_bytes))
    options += [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]
    if max_concurrent_streams is not None:
        options.append(("grpc.max_concurrent_streams", max_concurrent_streams))
    if max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(connection_age_grace_s * 1000)))
    return options
