"""Fixtures of the SDK tests."""

from __future__ import annotations

import socket

import pytest
from trainingplatform_sdk import LoggerSettings


@pytest.fixture
def unreachable_address() -> str:
    """A loopback address where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def fast_settings() -> LoggerSettings:
    """Settings that retry quickly, so tests spend their time on behaviour rather than backoff."""
    return LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5, rpc_timeout_s=5.0)
