"""Backend address parsing, channel options and auth metadata."""

from __future__ import annotations

import pytest
from trainingplatform_sdk import LoggerSettings
from trainingplatform_sdk.channel import BackendAddress, auth_metadata, parse_backend_address
from trainingplatform_sdk.telemetry.settings import channel_options


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:50051", BackendAddress("127.0.0.1:50051", tls=False)),
        ("backend:7000", BackendAddress("backend:7000", tls=False)),
        ("  backend:7000\n", BackendAddress("backend:7000", tls=False)),
        ("grpc://backend:7000", BackendAddress("backend:7000", tls=False)),
        ("GRPC://backend:7000/", BackendAddress("backend:7000", tls=False)),
        ("http://backend:8000/api/v1", BackendAddress("backend:8000", tls=False)),
        ("https://tp.example.com", BackendAddress("tp.example.com:443", tls=True)),
        ("https://tp.example.com:8443", BackendAddress("tp.example.com:8443", tls=True)),
        ("grpcs://tp.example.com:9000", BackendAddress("tp.example.com:9000", tls=True)),
        ("[::1]:50051", BackendAddress("[::1]:50051", tls=False)),
        ("grpc://[::1]:50051", BackendAddress("[::1]:50051", tls=False)),
    ],
)
def test_parse_backend_address(address: str, expected: BackendAddress) -> None:
    assert parse_backend_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", "   ", "backend", "grpc://backend", "ftp://backend:21", ":50051", "backend:notaport", "b:99999"]
)
def test_parse_backend_address_refuses_malformed(address: str) -> None:
    with pytest.raises(ValueError):
        parse_backend_address(address)


def test_channel_options_match_the_backend_ping_policy() -> None:
    options = dict(channel_options(LoggerSettings(max_batch_bytes=4 * 1024 * 1024)))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_send_message_length"] >= 4 * 1024 * 1024


def test_channel_reconnects_within_the_sender_backoff_and_never_cuts_a_handshake_short() -> None:
    settings = LoggerSettings(reconnect_initial_backoff_s=0.1, reconnect_max_backoff_s=5.0)
    options = dict(channel_options(settings))
    assert options["grpc.initial_reconnect_backoff_ms"] == 100
    # The channel's own attempts stay frequent (a restarted backend is used within a second) ...
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000
    # ... and gRPC's "min" backoff, its connect deadline, keeps its default.
    assert options["grpc.min_reconnect_backoff_ms"] == 20_000
    slow = dict(channel_options(LoggerSettings(reconnect_initial_backoff_s=60.0, reconnect_max_backoff_s=60.0)))
    assert slow["grpc.initial_reconnect_backoff_ms"] <= slow["grpc.max_reconnect_backoff_ms"] <= 1000


def test_auth_metadata_is_a_bearer_token() -> None:
    assert auth_metadata("s3cret") == (("authorization", "Bearer s3cret"),)
