"""When the sender's next attempt may start after a failure (`Connection.lost`): at once while the connection is
what broke, with backoff when the backend itself answered with an error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from trainingplatform_sdk import LoggerSettings
from trainingplatform_sdk.telemetry.sender.connection import Connection

# A backoff far longer than any wait here: an attempt scheduled with it shows at once.
SETTINGS = LoggerSettings(reconnect_initial_backoff_s=120.0, reconnect_max_backoff_s=120.0, reconnect_jitter=0.0)


class Failed(grpc.RpcError):
    """A failed call as gRPC reports it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.fixture
def connection(tmp_path: Path) -> Iterator[Connection]:
    channel = grpc.insecure_channel("127.0.0.1:1")
    connection = Connection("job", channel, (), SETTINGS, tmp_path, lambda: None)
    connection.established(0, 0)
    yield connection
    channel.close()


def test_a_call_that_waited_for_the_channel_and_found_the_old_connection_dead_retries_at_once(
    connection: Connection,
) -> None:
    # The backend was killed: the stream breaks, and the next attempt (a cursor read that waits for the channel)
    # can still go out on the dead connection before gRPC has noticed, and fail UNAVAILABLE. It once waited the
    # whole backoff (here 120 s) before trying again, however soon the backend was back.
    assert not connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "StreamMetrics")
    assert connection.retry_at <= time.monotonic()
    assert not connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "GetStreamCursor", waited=True)
    assert connection.retry_at <= time.monotonic()


def test_a_backend_that_keeps_answering_unavailable_is_asked_again_with_backoff(connection: Connection) -> None:
    # The backend is up but says UNAVAILABLE (its database is down): after the one quick retry, backoff.
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "StreamMetrics")
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "the database is unavailable"), "GetStreamCursor", waited=True)
    now = time.monotonic()
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "the database is unavailable"), "GetStreamCursor", waited=True)
    assert connection.retry_at >= now + 100
    # A connection made again starts a new outage's count.
    connection.established(0, 0)
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "StreamMetrics")
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "GetStreamCursor", waited=True)
    assert connection.retry_at <= time.monotonic()
