"""When the sender's next attempt may start after a failure (`Connection.lost`): at once while the connection is
what broke, with backoff when the backend itself answered with an error."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform_sdk import LoggerSettings, TrainingLogger
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
    # A connection that commits again (not one whose cursor read answers) starts a new outage's count.
    connection.established(0, 0)
    connection.healthy()
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "StreamMetrics")
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "GetStreamCursor", waited=True)
    assert connection.retry_at <= time.monotonic()


def test_a_backend_that_answers_the_cursor_but_fails_every_stream_is_asked_again_with_backoff(
    connection: Connection,
) -> None:
    # The cursor read answers (the database is read-only) and every stream fails: each answered read once reset
    # the backoff, and a stream's UNAVAILABLE always retried at once, so the logger retried ~15 times a second.
    for _ in range(3):
        connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "the database is unavailable"), "StreamMetrics")
        connection.established(0, 0)
    now = time.monotonic()
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "the database is unavailable"), "StreamMetrics")
    assert connection.retry_at >= now + 100
    # Once the backend commits again, the outage is over: the next broken stream is retried at once.
    connection.established(0, 0)
    connection.healthy()
    connection.lost(Failed(grpc.StatusCode.UNAVAILABLE, "Socket closed"), "StreamMetrics")
    assert connection.retry_at <= time.monotonic()


class FailingStreams(telemetry_pb2_grpc.TrainingTelemetryServiceServicer):
    """A backend whose cursor reads answer and whose streams fail UNAVAILABLE after their first message while
    `failing`; afterwards its streams commit what they receive."""

    def __init__(self) -> None:
        self.failing = True
        self.streams = 0
        self.committed = 0

    def GetStreamCursor(
        self, request: telemetry_pb2.GetStreamCursorRequest, context: grpc.ServicerContext
    ) -> telemetry_pb2.GetStreamCursorResponse:
        return telemetry_pb2.GetStreamCursorResponse(last_metric_sequence=self.committed)

    def StreamMetrics(
        self, request_iterator: Iterator[telemetry_pb2.StreamMetricsRequest], context: grpc.ServicerContext
    ) -> telemetry_pb2.StreamMetricsResponse:
        self.streams += 1
        for request in request_iterator:
            if self.failing:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the backend's database is unavailable; retry later")
            self.committed = max([self.committed, *(point.sequence for point in request_points(request))])
        return telemetry_pb2.StreamMetricsResponse(last_committed_sequence=self.committed)


@pytest.fixture
def failing_streams() -> Iterator[tuple[FailingStreams, str]]:
    servicer = FailingStreams()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    telemetry_pb2_grpc.add_TrainingTelemetryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_a_logger_whose_streams_keep_failing_backs_off_until_a_stream_commits(
    failing_streams: tuple[FailingStreams, str], tmp_path: Path
) -> None:
    servicer, address = failing_streams
    settings = LoggerSettings(reconnect_initial_backoff_s=0.5, reconnect_max_backoff_s=0.5, reconnect_jitter=0.0)
    logger = TrainingLogger("job", backend_address=address, token="t", spool_dir=tmp_path / "spool", settings=settings)
    try:
        logger.log_metric("loss", 1.0, step=1)
        wait_until(lambda: servicer.streams >= 2, 30, "two streams failed")
        connection = logger._sender._connection  # type: ignore[union-attr]
        # Each failed stream was retried at once, without end: the next attempt is due with the backoff now.
        wait_until(lambda: connection.retry_at > time.monotonic() + 0.1, 10, "the next attempt backed off")
        servicer.failing = False
        wait_until(lambda: logger.stats.committed_metrics == 1, 30, "the point committed once streams work")
        wait_until(lambda: connection._attempt == 0, 10, "the backoff started over once the backend committed")
    finally:
        logger.close(5)
