"""The sender's connection to the backend: its state, reconnect backoff, the final error, and open streams."""

from __future__ import annotations

import enum
import logging
import queue
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
from google.protobuf.message import Message
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from trainingplatform_sdk.telemetry.sender.codec import StreamResponse
from trainingplatform_sdk.telemetry.settings import LoggerSettings

_LOG = logging.getLogger("trainingplatform_sdk.logger")

Metadata = tuple[tuple[str, str], ...]

# Codes after which retrying cannot help: the token, the job or our own messages are wrong.
FINAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,  # the backend fenced this run: its dispatch attempt was superseded
}
# Codes that end one unary call for good without stopping the rest (an illegal status transition): sending it
# again unchanged cannot succeed. A request over the server's message size limit is refused too (`too_large`);
# any other RESOURCE_EXHAUSTED (a server or job at its limit of open calls) is retried with backoff.
CALL_REFUSED_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
}

# Messages handed to a stream but not yet written; a small window keeps memory in our buffers, not gRPC's.
STREAM_WINDOW = 2
# Longest wait of a stream's request iterator for its next message before it checks whether the call is over.
_IDLE_REQUEST_WAIT_S = 5.0
# Put in a stream's queue to make its request iterator check whether the call is over.
_CHECK = object()

_SERVICE = telemetry_pb2.DESCRIPTOR.services_by_name["TrainingTelemetryService"].full_name
_STREAM_RESPONSES: dict[str, Callable[[bytes], StreamResponse]] = {
    "StreamMetrics": telemetry_pb2.StreamMetricsResponse.FromString,
    "StreamLogs": telemetry_pb2.StreamLogsResponse.FromString,
}


def too_large(exc: BaseException) -> bool:
    """Whether a call failed because a message passed gRPC's size limit (the server's receive limit, "Received
    message larger than max", or the channel's send limit, "Sent message larger than max"), as opposed to a limit
    of open calls, which is also RESOURCE_EXHAUSTED but passes."""
    code, details = status_of(exc)
    return code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and details of a failed call; UNKNOWN and the text of any other exception."""
    code: grpc.StatusCode = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details: str = exc.details() if hasattr(exc, "details") else str(exc)
    return code, details


class ConnectionState(enum.Enum):
    """Where the sender stands with the backend."""

    DISCONNECTED = "disconnected"
    """Not connected yet, or lost: the next attempt waits until `Connection.retry_at`."""
    CONNECTED = "connected"
    """The committed cursor was read: points and calls may be sent."""
    FAILED = "failed"
    """The backend refused telemetry for good (`Connection.error`): nothing more is sent."""


class OpenStream:
    """One open client-streaming call of already serialized requests and the queue its request iterator reads from.

    `on_event` wakes the sender when the call ends and when a message leaves a full window, and only then: at a
    few messages a second a wake-up per message would cost more than the message.
    """

    def __init__(
        self,
        method: grpc.StreamUnaryMultiCallable[bytes, StreamResponse],
        metadata: Metadata,
        on_event: Callable[[], None],
    ) -> None:
        # A SimpleQueue: its put and its blocking get are in C, cheaper per message than a deque and an Event.
        self._queue: queue.SimpleQueue[bytes | object | None] = queue.SimpleQueue()
        self._on_event = on_event
        self._stopped = False
        self.queued = 0
        self.taken = 0
        self.half_closed = False
        #: Set (from gRPC's thread) once the call has ended, however it ended.
        self.finished = False
        self.future: grpc.Future[StreamResponse] = method.future(self._requests(), metadata=metadata)
        self.future.add_done_callback(self._done)

    def _done(self, _future: grpc.Future[StreamResponse]) -> None:
        self.finished = True
        self._queue.put(_CHECK)
        self._on_event()

    def _requests(self) -> Iterator[bytes]:
        # gRPC's consumer thread runs this; it must return once the call is over or it would wait forever (the
        # done callback wakes it; the timeout is a safety net).
        get = self._queue.get
        while True:
            try:
                item = get(timeout=_IDLE_REQUEST_WAIT_S)
            except queue.Empty:
                item = _CHECK
            if item is _CHECK:
                if self._stopped or self.finished:
                    return
                continue
            if item is None:
                return
            self.taken += 1
            if self.queued - self.taken + 1 >= STREAM_WINDOW:
                self._on_event()  # the window was full: the sender may be waiting to send more
            yield cast(bytes, item)

    @property
    def has_room(self) -> bool:
        """Whether the window takes another message."""
        return self.queued - self.taken < STREAM_WINDOW

    def send(self, message: bytes) -> None:
        """Queues one serialized request."""
        self.queued += 1
        self._queue.put(message)

    def half_close(self) -> None:
        self.half_closed = True
        self._queue.put(None)

    def cancel(self) -> None:
        self._stopped = True
        self._queue.put(_CHECK)
        self.future.cancel()


class Connection:
    """The channel to the backend, whether it is usable, and when to try again after losing it.

    Failures other than a final one back off exponentially with jitter; an outage is logged once, at its start,
    and counted as a reconnect when the cursor is read again. It ends, and the backoff starts over, only once the
    backend commits again (`healthy`): a backend that answers cursor reads but fails every stream (its database
    read-only) is asked again with backoff, not at once after each answered read. Every call is non-blocking (a
    future whose end wakes the sender), so the sender keeps draining and spooling whatever the network does. A
    reconnect attempt waits for the channel to be ready (gRPC reconnects it with its own, matched backoff) rather
    than failing at once and sleeping on top, and the channel becoming ready again wakes the sender out of its
    backoff.
    """

    def __init__(
        self,
        job_id: str,
        channel: grpc.Channel,
        metadata: Metadata,
        settings: LoggerSettings,
        spool_directory: Path,
        on_event: Callable[[], None],
    ) -> None:
        """`on_event` is called (from gRPC's threads) when a stream ends or frees room in its window."""
        self.job_id = job_id
        self.settings = settings
        self.state = ConnectionState.DISCONNECTED
        #: `state is CONNECTED`, kept with the state: the loop reads it several times per message.
        self.connected = False
        self.error: str | None = None
        self.reconnects = 0
        #: When the next attempt may start (time.monotonic()).
        self.retry_at = 0.0
        self._channel = channel
        self._stub = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
        # The streams carry requests the codecs have already serialized: no serializer, no message objects.
        self._streams = {
            method: channel.stream_unary(f"/{_SERVICE}/{method}", request_serializer=None, response_deserializer=parse)
            for method, parse in _STREAM_RESPONSES.items()
        }
        self._metadata = metadata
        self._spool_directory = spool_directory
        self._on_event = on_event
        self._attempt = 0
        self._outage_logged = False
        #: Whether this outage's one immediate retry after a waited UNAVAILABLE was used (`lost`).
        self._quick_retry_used = False
        #: Whether this outage's one immediate retry after an UNAVAILABLE that did not wait was used (`lost`).
        self._broken_retry_used = False
        #: Whether this outage's end of unreachability was logged and counted (`established`).
        self._resume_logged = False
        # No channel.subscribe() to hear when the channel is READY again: its polling thread sits inside gRPC and
        # makes a fork (a DataLoader worker) abort. Attempts after the first use wait_for_ready instead.

    # -- calls -------------------------------------------------------------------------------------------------------

    def read_cursor(self, wait_for_ready: bool = False) -> grpc.Future[telemetry_pb2.GetStreamCursorResponse]:
        """Starts reading the backend's committed cursor of the job; its end wakes the sender.

        `wait_for_ready` lets the call wait (up to the deadline) for the channel to connect instead of failing
        at once while it is not.
        """
        future: grpc.Future[telemetry_pb2.GetStreamCursorResponse] = self._stub.GetStreamCursor.future(
            telemetry_pb2.GetStreamCursorRequest(job_id=self.job_id),
            metadata=self._metadata,
            timeout=self.settings.rpc_timeout_s,
            wait_for_ready=wait_for_ready,
        )
        future.add_done_callback(self._wake)
        return future

    def call(self, method: str, request: Message) -> grpc.Future[Message]:
        """Starts one unary call of TrainingTelemetryService; its end wakes the sender."""
        future: grpc.Future[Message] = getattr(self._stub, method).future(
            request, metadata=self._metadata, timeout=self.settings.rpc_timeout_s
        )
        future.add_done_callback(self._wake)
        return future

    def _wake(self, _future: grpc.Future[Any]) -> None:
        self._on_event()

    def open_stream(self, method: str) -> OpenStream:
        """Opens a client-streaming call of TrainingTelemetryService."""
        return OpenStream(self._streams[method], self._metadata, self._on_event)

    def close(self) -> None:
        self._channel.close()

    # -- state -------------------------------------------------------------------------------------------------------

    def established(self, metric_cursor: int, log_cursor: int) -> None:
        """Marks the connection usable once the cursor was read; the first time in an outage, logs and counts the
        reconnect. The outage and its backoff last until `healthy`."""
        if self._outage_logged and not self._resume_logged:
            self._resume_logged = True
            self.reconnects += 1
            _LOG.warning(
                "job %s: backend reachable again; resending from metric %d / log %d",
                self.job_id,
                metric_cursor,
                log_cursor,
            )
        self._enter(ConnectionState.CONNECTED)

    def healthy(self) -> None:
        """The backend committed again (its cursor moved), or answered with nothing left to commit: ends the
        outage, so the next failure is logged as a new one and retried without backoff first."""
        self._attempt = 0
        self._outage_logged = False
        self._resume_logged = False
        self._quick_retry_used = False
        self._broken_retry_used = False

    def disconnect(self) -> None:
        """Marks a usable connection unusable (a final failure stays final)."""
        if self.connected:
            self._enter(ConnectionState.DISCONNECTED)

    @property
    def unreachable(self) -> bool:
        """Whether an outage is under way (an attempt failed since the last connection) or delivery failed."""
        return self.state is ConnectionState.FAILED or (not self.connected and self._outage_logged)

    def retry_now(self) -> None:
        """Lets the next attempt start at once (the server ended a stream on its own: no backoff)."""
        self.retry_at = time.monotonic()

    def fail(self, message: str) -> None:
        """Stops delivery for good with `message` as the final error."""
        self.disconnect()
        self._fail(message)

    def lost(self, exc: BaseException, what: str, waited: bool = False) -> bool:
        """Handles a failed call or a broken stream; returns True when the failure is final.

        A final failure stops delivery for good. A broken connection (the first UNAVAILABLE in this outage from a
        call that did not wait, and the first from one that did) makes the next attempt start at once, waiting for
        the channel to connect; a call that waited its whole deadline for that also lets the next start at once.
        Any other failure schedules the next attempt with backoff: a stream failing UNAVAILABLE again after the
        cursor was read again in the same outage means the backend answers but cannot commit.
        """
        code, details = status_of(exc)
        self.disconnect()
        if code in FINAL_CODES:
            self._fail(f"{what}: {code.name}: {details}")
            return True
        if waited and code is grpc.StatusCode.DEADLINE_EXCEEDED and self._outage_logged:
            self.retry_at = time.monotonic()
            _LOG.debug(
                "job %s: the backend is still unreachable after %.1f s", self.job_id, self.settings.rpc_timeout_s
            )
            return False
        quick_retry_used = self._quick_retry_used if waited else self._broken_retry_used
        if code is grpc.StatusCode.UNAVAILABLE and not quick_retry_used:
            # The connection broke: the next attempt waits for the channel to connect again (gRPC's reconnect
            # backoff, at most 0.5 s apart), so it starts at once and resumes as soon as the backend is back. The
            # first attempt that waited may still have gone out on the dead connection before gRPC noticed, and
            # failed UNAVAILABLE too: it is retried at once, once per outage. Only an attempt that reached the
            # channel and still failed after that backs off below (a backend whose database is down), and so does
            # a stream that fails again once the cursor was read (a backend that reads but cannot commit).
            if waited:
                self._quick_retry_used = True
            else:
                self._broken_retry_used = True
            delay = 0.0
        else:
            settings = self.settings
            delay_bound = min(
                settings.reconnect_max_backoff_s,
                settings.reconnect_initial_backoff_s * settings.reconnect_backoff_multiplier**self._attempt,
            )
            delay = delay_bound * (1 - settings.reconnect_jitter * random.random())
            self._attempt += 1
        self.retry_at = time.monotonic() + delay
        if not self._outage_logged:
            self._outage_logged = True
            _LOG.warning(
                "job %s: backend unreachable (%s: %s: %s); spooling and retrying with backoff",
                self.job_id,
                what,
                code.name,
                details,
            )
        else:
            _LOG.debug("job %s: reconnect attempt failed (%s), next in %.2f s", self.job_id, code.name, delay)
        return False

    def _enter(self, state: ConnectionState) -> None:
        self.state = state
        self.connected = state is ConnectionState.CONNECTED

    def _fail(self, message: str) -> None:
        self._enter(ConnectionState.FAILED)
        self.error = message
        _LOG.error(
            "job %s: the backend refused telemetry for good (%s); nothing more is sent, "
            "points stay in the spool %s for a later replay",
            self.job_id,
            message,
            self._spool_directory,
        )
