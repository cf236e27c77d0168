"""The network side of the sender: reading the committed cursor, feeding the streams, making the calls."""

from __future__ import annotations

import logging
import time

import grpc
from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.telemetry.sender.calls import CallQueue
from trainingplatform_sdk.telemetry.sender.codec import BufferedLog, BufferedMetric
from trainingplatform_sdk.telemetry.sender.connection import CALL_REFUSED_CODES, Connection, status_of
from trainingplatform_sdk.telemetry.sender.outbox import AnyOutbox, Outbox
from trainingplatform_sdk.telemetry.sender.state import SavedState
from trainingplatform_sdk.telemetry.settings import LoggerSettings

_LOG = logging.getLogger("trainingplatform_sdk.logger")


class Delivery:
    """Moves the outboxes' points and the queued calls to the backend over one connection.

    Sends from where the backend's cursor says it has committed, forgets what the cursor has passed, and on any
    failure lets the connection decide whether to retry; nothing is lost by a broken stream, only resent.
    """

    def __init__(
        self,
        connection: Connection,
        metrics: Outbox[BufferedMetric],
        logs: Outbox[BufferedLog],
        calls: CallQueue,
        state: SavedState,
        settings: LoggerSettings,
    ) -> None:
        self.job_id = connection.job_id
        self.settings = settings
        #: Points and records the backend reported as already stored.
        self.duplicates = 0
        self._connection = connection
        self._metrics = metrics
        self._logs = logs
        self._outboxes: tuple[AnyOutbox, ...] = (metrics, logs)
        self._calls = calls
        self._state = state
        self._numbering_checked = False
        self._last_poll = 0.0

    def deliver(self, partial: bool, now: float, closing: bool) -> None:
        """Connects if it is time to, then sends what is due; `partial` sends batches that are not full."""
        connection = self._connection
        if not connection.connected:
            if now < connection.retry_at:
                return
            self.connect()
            if not connection.connected:
                return
        self._check_streams()
        if connection.connected:
            self._send(self._metrics, partial)
            self._send(self._logs, partial)
        if connection.connected and self._cursor_due(now, closing):
            self._poll_cursor()
        if connection.connected:
            self._deliver_calls()

    def connect(self) -> None:
        """Reads the cursor and resumes every stream from it (the first time, also checks the numbering)."""
        cursor = self._read_cursor()
        if cursor is None:
            return
        sequences = ((self._metrics, cursor.last_metric_sequence), (self._logs, cursor.last_log_sequence))
        if not self._numbering_checked:
            self._numbering_checked = True
            for outbox, sequence in sequences:
                self._check_numbering(outbox, sequence)
        for outbox, sequence in sequences:
            self._advance(outbox, sequence)
            outbox.sent = max(outbox.committed, sequence)
        self._connection.established(cursor.last_metric_sequence, cursor.last_log_sequence)

    def disconnect(self) -> None:
        """Cancels the open streams; what they carried is sent again from the cursor on the next connection."""
        self._connection.disconnect()
        self._calls.waiting = False
        for outbox in self._outboxes:
            outbox.cancel_stream()

    def close_streams(self, deadline: float) -> None:
        """Half-closes the streams and reads their responses until `deadline`: the committed totals, duplicates."""
        streams = [(outbox, outbox.stream) for outbox in self._outboxes if outbox.stream is not None]
        for _, stream in streams:
            stream.half_close()
        for outbox, stream in streams:
            try:
                response = stream.future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError) as exc:
                _LOG.debug("job %s: %s stream ended without a response (%s)", self.job_id, outbox.name, exc)
                continue
            self.duplicates += response.duplicates_ignored
            self._advance(outbox, response.last_committed_sequence)

    # -- the cursor --------------------------------------------------------------------------------------------------

    def _read_cursor(self) -> telemetry_pb2.GetStreamCursorResponse | None:
        try:
            cursor = self._connection.read_cursor()
        except grpc.RpcError as exc:
            self._rpc_failed(exc, "GetStreamCursor")
            return None
        self._last_poll = time.monotonic()
        return cursor

    def _check_numbering(self, outbox: AnyOutbox, cursor: int) -> None:
        """Moves the numbering above a cursor that is ahead of what the spool state remembers (state lost)."""
        base = outbox.base
        shift = outbox.continue_after(cursor)
        if shift:
            self._calls.shift_barriers(outbox.name, base, shift)
            self._state.save()

    def _cursor_due(self, now: float, closing: bool) -> bool:
        if self._metrics.sent <= self._metrics.committed and self._logs.sent <= self._logs.committed:
            return False  # nothing in flight
        if self._calls.waiting or closing:
            return True
        half_memory = self.settings.memory_buffer_points // 2
        if len(self._metrics.memory) > half_memory or len(self._logs.memory) > half_memory:
            return True
        return now - self._last_poll >= self.settings.cursor_poll_interval_s

    def _poll_cursor(self) -> None:
        cursor = self._read_cursor()
        if cursor is None:
            return
        self._advance(self._metrics, cursor.last_metric_sequence)
        self._advance(self._logs, cursor.last_log_sequence)

    def _advance(self, outbox: AnyOutbox, cursor: int) -> None:
        """Forgets what the committed cursor covers."""
        if outbox.advance(cursor):
            self._state.dirty = True

    # -- streams and calls -------------------------------------------------------------------------------------------

    def _send(self, outbox: AnyOutbox, partial: bool) -> None:
        while outbox.stream is None or outbox.stream.has_room:
            message = outbox.next_message(partial)
            if message is None:
                return
            request, last = message
            if outbox.stream is None:
                outbox.stream = self._connection.open_stream(outbox.codec.method)
            outbox.stream.send(request)
            outbox.sent = last

    def _check_streams(self) -> None:
        for outbox in self._outboxes:
            stream = outbox.stream
            if stream is None or not stream.finished or stream.half_closed:
                continue
            outbox.stream = None
            future = stream.future
            exc = future.exception() if not future.cancelled() else None
            if exc is None:
                # The server ended the call on its own: resume from the cursor like after any broken stream.
                response = future.result()
                self.duplicates += response.duplicates_ignored
                self._advance(outbox, response.last_committed_sequence)
                self.disconnect()
                self._connection.retry_now()
                return
            self._rpc_failed(exc, outbox.codec.method)
            return

    def _deliver_calls(self) -> None:
        calls = self._calls
        calls.waiting = False
        while (call := calls.next_call()) is not None:
            try:
                self._connection.call(call.method, call.request)
            except grpc.RpcError as exc:
                code, details = status_of(exc)
                if code not in CALL_REFUSED_CODES:
                    self._rpc_failed(exc, call.method)
                    return
                calls.failed += 1
                _LOG.error("job %s: %s refused (%s: %s); not retried", self.job_id, call.method, code.name, details)
            else:
                calls.delivered += 1
            calls.pop()
            self._state.dirty = True

    def _rpc_failed(self, exc: BaseException, what: str) -> None:
        """Handles a failed call or a broken stream: a final error stops delivery, anything else reconnects."""
        self.disconnect()
        if self._connection.lost(exc, what):
            self._calls.finish_flushes(False)
