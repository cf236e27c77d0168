"""The network side of the sender: reading the committed cursor, feeding the streams, making the calls.

Nothing here blocks the sender thread: the cursor reads and the unary calls are futures (one at a time) whose end
wakes the sender, and the streams are fed through bounded windows; so the sender keeps draining the caller's
buffer into memory and the spool during a network stall.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import grpc
from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_sdk.telemetry.sender.calls import CallQueue, PendingCall
from trainingplatform_sdk.telemetry.sender.codec import BufferedLog, BufferedMetric
from trainingplatform_sdk.telemetry.sender.connection import CALL_REFUSED_CODES, Connection, status_of, too_large
from trainingplatform_sdk.telemetry.sender.outbox import AnyOutbox, Outbox
from trainingplatform_sdk.telemetry.sender.state import SavedState
from trainingplatform_sdk.telemetry.settings import LoggerSettings

_LOG = logging.getLogger("trainingplatform_sdk.logger")

_TOO_LARGE = "larger than the server's message size limit on its own"


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
        self._attempted = False
        self._last_poll = time.monotonic()
        #: The one outstanding cursor read ("connect", "poll") or unary call ("call"), if any.
        self._pending: tuple[Literal["connect", "poll", "call"], grpc.Future[Any]] | None = None
        self._connect_waits = False
        #: Per stream, sequences dropped as too large to send (the cursor is taken past them once reached).
        self._skipped: dict[str, set[int]] = {outbox.name: set() for outbox in self._outboxes}
        #: Streams whose cursor was seen past this logger's numbering (another writer), said once each.
        self._other_writer_said: set[str] = set()
        #: What the last cursor read said: nobody watches the job live (the sender may send less often).
        self.unwatched = False

    def deliver(self, partial: bool, now: float, closing: bool) -> None:
        """Takes the answer of the outstanding call, connects if it is time to, then sends what is due; `partial`
        sends batches that are not full. Never waits for the network."""
        self._collect()
        connection = self._connection
        if not connection.connected:
            if self._pending is None and now >= connection.retry_at:
                self.connect()
            return
        self._check_streams()
        # A read that a flush, a call or the close waits for goes behind this wake-up's batches, so that its answer
        # covers them (the backend commits a job's queued batches before it answers). The once-a-second read goes
        # before them: the backend then answers from what it has committed, and the batches linger with the other
        # jobs' for the group commit (`TP_COMMIT_LINGER_S`) instead of being committed at once.
        barrier = self._calls.waiting or closing
        if not barrier:
            self._poll_if_due(now, closing)
        if connection.connected:
            self._send(self._metrics, partial)
            self._send(self._logs, partial)
        if barrier:
            self._poll_if_due(now, closing)
        if connection.connected and self._pending is None:
            self._deliver_calls()

    def _poll_if_due(self, now: float, closing: bool) -> None:
        if self._connection.connected and self._pending is None and self._cursor_due(now, closing):
            # Timed from when it is asked, so the next read falls on the wake-up that sends the next partial batch
            # an interval later, not on one of its own a few milliseconds after.
            self._last_poll = now
            self._pending = ("poll", self._connection.read_cursor())

    def connect(self) -> None:
        """Starts reading the cursor; when it answers, every stream resumes from it (see `_established`).

        The first attempt fails at once when the backend is unreachable (the points go to the spool); later ones
        wait for the channel to connect, so delivery resumes as soon as the backend is back.
        """
        self._connect_waits = self._attempted
        self._last_poll = time.monotonic()
        self._pending = ("connect", self._connection.read_cursor(wait_for_ready=self._connect_waits))
        self._attempted = True

    def _collect(self) -> None:
        """Handles the outstanding cursor read or call once it has ended."""
        pending = self._pending
        if pending is None or not pending[1].done():
            return
        self._pending = None
        kind, future = pending
        if future.cancelled():
            return
        exc = future.exception()
        if kind == "call":
            self._call_ended(exc)
            return
        if exc is not None:
            self._rpc_failed(exc, "GetStreamCursor", waited=kind == "connect" and self._connect_waits)
            return
        cursor: telemetry_pb2.GetStreamCursorResponse = future.result()
        self.unwatched = cursor.unwatched
        if kind == "connect":
            self._established(cursor)
            return
        self._apply_cursor(cursor)
        if not self._in_flight():
            self._connection.healthy()  # everything sent is committed (a moved cursor said so already)

    def _established(self, cursor: telemetry_pb2.GetStreamCursorResponse) -> None:
        """Resumes every stream from the cursor (the first time, also checks the numbering)."""
        for outbox in self._outboxes:
            outbox.codec.apply_server_limit(cursor.max_message_bytes)
        sequences = ((self._metrics, cursor.last_metric_sequence), (self._logs, cursor.last_log_sequence))
        if not self._numbering_checked:
            self._numbering_checked = True
            for outbox, sequence in sequences:
                self._check_numbering(outbox, sequence)
        # Connected first: a cursor that moved since (what a broken stream carried was committed) ends the outage
        # only after its reconnect was counted.
        self._connection.established(cursor.last_metric_sequence, cursor.last_log_sequence)
        for outbox, sequence in sequences:
            self._advance(outbox, sequence)
            outbox.sent = max(outbox.committed, sequence)

    def disconnect(self) -> None:
        """Cancels the open streams and the outstanding call; what they carried is sent again from the cursor on
        the next connection."""
        self._connection.disconnect()
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
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

    def read_cursor_until(self, deadline: float) -> None:
        """Reads the committed cursor once, waiting until `deadline`, and forgets what it covers; a failed read
        changes nothing. After a final refusal: a job's token still reads its cursor once the job ended."""
        if not self._numbering_checked:
            return  # what of this logger's provisional numbering the cursor covers is unknown: nothing
        try:
            cursor = self._connection.read_cursor().result(timeout=max(0.0, deadline - time.monotonic()))
        except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError):
            return
        self._apply_cursor(cursor)

    def next_poll(self) -> float | None:
        """When the cursor is next due to be read: while points are in flight, every poll interval; with nothing in
        flight, every `heartbeat_interval_s` (the backend fails a job without a trainer whose reporter is silent).
        None: a read or call is outstanding and its end wakes the sender, or not connected."""
        if self._pending is not None or not self._connection.connected:
            return None
        if not self._in_flight():
            return self._last_poll + self.settings.heartbeat_interval_s
        return self._last_poll + self._poll_interval()

    def _in_flight(self) -> bool:
        """Whether points or records were sent that the committed cursor has not passed yet."""
        return self._metrics.sent > self._metrics.committed or self._logs.sent > self._logs.committed

    def _poll_interval(self) -> float:
        """How often the cursor is read while points are in flight: rarely while nobody watches the job, since the
        backend ends the streams when someone subscribes (see `_stream_opened`)."""
        settings = self.settings
        if self.unwatched:
            return max(settings.cursor_poll_interval_s, settings.unwatched_cursor_poll_interval_s)
        return settings.cursor_poll_interval_s

    @property
    def idle(self) -> bool:
        """Whether no cursor read or call is outstanding."""
        return self._pending is None

    def can_send(self) -> bool:
        """Whether a message could go now: connected, and no open stream's window is full."""
        return self._connection.connected and all(
            outbox.stream is None or outbox.stream.has_room for outbox in self._outboxes
        )

    # -- the cursor --------------------------------------------------------------------------------------------------

    def _check_numbering(self, outbox: AnyOutbox, cursor: int) -> None:
        """Moves the numbering above a cursor that is ahead of what the spool knew (a new spool, or its state lost),
        points in memory and in the spool alike. Saved durably before anything is sent: a restart must never take
        a numbering already checked (and points then sent) for a provisional one and renumber it again."""
        base = outbox.base
        checked = outbox.checked
        shift = outbox.continue_after(cursor)
        if shift:
            self._calls.shift_barriers(outbox.name, base, shift)
        if shift or not checked:
            self._state.save(durable=True)

    def _cursor_due(self, now: float, closing: bool) -> bool:
        if not self._in_flight():
            # Nothing in flight: only the heartbeat (cursor reads and calls are the backend's word from the job).
            return not closing and now - self._last_poll >= self.settings.heartbeat_interval_s
        if self._calls.waiting or closing:
            return True
        half_memory = self.settings.memory_buffer_points // 2
        if len(self._metrics.memory) > half_memory or len(self._logs.memory) > half_memory:
            return True
        return now - self._last_poll >= self._poll_interval()

    def _apply_cursor(self, cursor: telemetry_pb2.GetStreamCursorResponse) -> None:
        """Forgets what a cursor read says the backend committed, in both streams."""
        self._advance(self._metrics, cursor.last_metric_sequence)
        self._advance(self._logs, cursor.last_log_sequence)

    def _advance(self, outbox: AnyOutbox, cursor: int) -> None:
        """Forgets what the committed cursor covers, and the points dropped as too large right above it."""
        skipped = self._skipped[outbox.name]
        if skipped:
            cursor = max(cursor, outbox.committed)
            while cursor + 1 in skipped:
                cursor += 1
            skipped.difference_update([sequence for sequence in skipped if sequence <= cursor])
        if cursor > outbox.assigned and outbox.logged and outbox.name not in self._other_writer_said:
            # Past the numbering check at connect, only another writer moves the cursor past what this one numbered.
            # A stream this logger does not write is another's by design: `tp run` writes the log stream of a job
            # whose script's logger writes its metrics (the relay).
            self._other_writer_said.add(outbox.name)
            _LOG.error(
                "job %s: the backend holds %s numbered up to %d, past the %d this logger numbered: another logger is "
                "writing this job (the script started twice with the same job?). Where their numbers meet, the "
                "backend keeps the first and drops the other as a duplicate; a job must have one logger at a time",
                outbox.codec.job_id,
                outbox.name,
                cursor,
                outbox.assigned,
            )
        if outbox.advance(cursor):
            self._state.dirty = True
            self._connection.healthy()  # the backend commits: an outage is over, the backoff starts over

    # -- streams and calls -------------------------------------------------------------------------------------------

    def _send(self, outbox: AnyOutbox, partial: bool) -> None:
        while outbox.stream is None or outbox.stream.has_room:
            message = outbox.next_message(partial)
            if message is None:
                return
            payload, last, count = message
            if count == 1 and len(payload) > outbox.codec.max_bytes:
                self._drop_too_large(outbox, last)
                continue
            if outbox.stream is None:
                outbox.stream = self._connection.open_stream(outbox.codec.method)
                self._stream_opened()
            outbox.stream.send(payload)
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
            if too_large(exc):
                self._refused_as_too_large(outbox, exc)
                return
            self._rpc_failed(exc, outbox.codec.method)
            return

    def _stream_opened(self) -> None:
        """A stream opened while the cursor said nobody watches: the backend can end it for a new subscriber only
        once its first message arrived, so the next read comes within `cursor_poll_interval_s` (not the unwatched
        interval) and catches a subscriber that came before."""
        if self.unwatched:
            soon = time.monotonic() + self.settings.cursor_poll_interval_s - self._poll_interval()
            self._last_poll = min(self._last_poll, soon)

    def _drop_too_large(self, outbox: AnyOutbox, last: int) -> None:
        """Drops a point that cannot fit in any message the server takes: counted invalid, logged once."""
        outbox.sent = last
        skipped = self._skipped[outbox.name]
        if last in skipped:
            return  # dropped before a reconnect already, counted then
        skipped.add(last)
        outbox.refuse(f"a point {_TOO_LARGE} ({outbox.codec.max_bytes} bytes)")
        self._advance(outbox, outbox.committed)

    def _refused_as_too_large(self, outbox: AnyOutbox, exc: BaseException) -> None:
        """The server refused a message as too large: the messages are halved and resent from the cursor, never
        unchanged; a server refusing even the smallest ones stops delivery."""
        self.disconnect()
        codec = outbox.codec
        _, details = status_of(exc)
        if not codec.shrink():
            self._connection.fail(f"{codec.method}: RESOURCE_EXHAUSTED: {details}")
            self._calls.finish_flushes(False)
            return
        _LOG.warning(
            "job %s: the backend refused a %s message as too large (%s); messages are now at most %d bytes",
            self.job_id,
            outbox.name,
            details,
            codec.max_bytes,
        )
        self._connection.retry_now()

    def _deliver_calls(self) -> None:
        """Starts the call at the head of the queue once every point before it is committed."""
        calls = self._calls
        calls.waiting = False
        call = calls.next_call()
        if call is not None:
            self._pending = ("call", self._connection.call(call.method, call.request))

    def _call_ended(self, exc: BaseException | None) -> None:
        """Handles the end of the call at the head of the queue: made, refused for good, or to be made again."""
        calls = self._calls
        call = calls.next_call()
        if not isinstance(call, PendingCall):  # cannot happen: the head stays while its call is outstanding
            return
        if exc is not None:
            code, details = status_of(exc)
            if code not in CALL_REFUSED_CODES and not too_large(exc):
                self._rpc_failed(exc, call.method)
                return
            calls.refuse()
            _LOG.error("job %s: %s refused (%s: %s); not retried", self.job_id, call.method, code.name, details)
        else:
            calls.pop()
            self._connection.healthy()
        self._state.dirty = True
        self._state.urgent = True

    def _rpc_failed(self, exc: BaseException, what: str, waited: bool = False) -> None:
        """Handles a failed call or a broken stream: a final error stops delivery, anything else reconnects."""
        self.disconnect()
        if self._connection.lost(exc, what, waited):
            self._calls.finish_flushes(False)
