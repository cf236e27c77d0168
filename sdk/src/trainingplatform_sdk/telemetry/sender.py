"""The TrainingLogger's background sender: numbering, batching, the two streams, reconnects, spool and calls.

The caller's thread only appends tuples to a deque. This thread alone takes them out, numbers them (so the
numbering follows the deque's total order even with several logging threads), and owns every other structure,
so nothing here needs a lock. A point is forgotten only when the backend's committed cursor has passed it.
"""

from __future__ import annotations

import base64
import itertools
import logging
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import Message
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from trainingplatform_sdk.telemetry.report import DeliveryReport
from trainingplatform_sdk.telemetry.settings import LoggerSettings
from trainingplatform_sdk.telemetry.spool import Spool

_LOG = logging.getLogger("trainingplatform_sdk.logger")

# Tags of the tuples in the caller's buffer (the tuple's first element).
METRIC = 0
LOG = 1
CALL = 2
FLUSH = 3

# Codes after which retrying cannot help: the token, the job or our own messages are wrong.
_FINAL_CODES = {
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
}
# Codes that end one unary call for good without stopping the rest (an illegal status transition).
_CALL_REFUSED_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


CALL_REQUESTS: dict[str, type[Message]] = {
    "UpdateStatus": telemetry_pb2.UpdateStatusRequest,
    "RecordEpochSummary": telemetry_pb2.RecordEpochSummaryRequest,
    "ReportRunInfo": telemetry_pb2.ReportRunInfoRequest,
}

_MAX_KEY_CHARS = 250
_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f]")
# Upper bounds of a point's encoding beyond its strings (tags, varints, doubles, the repeated-field envelope).
_METRIC_OVERHEAD = 56
_LOG_OVERHEAD = 72
# Messages handed to a stream but not yet written; a small window keeps memory in our buffers, not gRPC's.
_STREAM_WINDOW = 2
_IDLE_REQUEST_WAIT_S = 5.0
_KNOWN_KEYS_LIMIT = 10_000


def _valid_key(key: object) -> bool:
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_KEY_CHARS or _CONTROL_CHARS.search(key):
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Waiter:
    """A flush request: set when everything logged before it is committed (or when it can no longer be)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result = False

    def finish(self, result: bool) -> None:
        self.result = result
        self.event.set()


@dataclass
class _Call:
    """A unary call waiting for every point logged before it to be committed (the barriers)."""

    method: str | None  # None for a flush waiter
    request: Message | None
    metric_barrier: int
    log_barrier: int
    waiter: Waiter | None = None


class _Stream:
    """One open client-streaming call and the queue its request iterator reads from.

    `on_event` wakes the sender when the call ends and when a message leaves a full window, and only then: at a
    few messages a second a wake-up per message would cost more than the message.
    """

    def __init__(self, method: grpc.StreamUnaryMultiCallable, metadata: Any, on_event: Callable[[], None]) -> None:
        self._queue: deque[Message | None] = deque()
        self._ready = threading.Event()
        self._on_event = on_event
        self._stopped = False
        self.queued = 0
        self.taken = 0
        self.half_closed = False
        #: Set (from gRPC's thread) once the call has ended, however it ended.
        self.finished = False
        self.future: grpc.Future | None = None
        self.future = method.future(self._requests(), metadata=metadata)
        self.future.add_done_callback(self._done)

    def _done(self, _future: grpc.Future) -> None:
        self.finished = True
        self._ready.set()
        self._on_event()

    def _requests(self) -> Iterator[Message]:
        # gRPC's consumer thread runs this; it must return once the call is over or it would wait forever (the
        # done callback wakes it; the timeout is a safety net).
        while True:
            if not self._queue:
                self._ready.wait(_IDLE_REQUEST_WAIT_S)
                self._ready.clear()
                if self._stopped or self.finished:
                    return
                continue
            item = self._queue.popleft()
            if item is None:
                return
            self.taken += 1
            if self.queued - self.taken + 1 >= _STREAM_WINDOW:
                self._on_event()  # the window was full: the sender may be waiting to send more
            yield item

    @property
    def in_flight(self) -> int:
        return self.queued - self.taken

    def send(self, message: Message) -> None:
        self.queued += 1
        self._queue.append(message)
        self._ready.set()

    def half_close(self) -> None:
        self.half_closed = True
        self._queue.append(None)
        self._ready.set()

    def cancel(self) -> None:
        self._stopped = True
        self._ready.set()
        if self.future is not None:
            self.future.cancel()


class _Kind:
    """The uncommitted points of one stream kind: on disk (lower sequences) then in memory (higher)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.assigned = 0  # highest sequence ever assigned, persisted before a point leaves memory
        self.base = 0  # `assigned` as loaded at start
        self.committed = 0  # highest sequence known committed
        self.sent = 0  # highest sequence handed to the current stream
        self.memory: deque[tuple] = deque()  # (sequence, ...fields), contiguous sequences above the spool's
        self.stream: _Stream | None = None
        self.logged = 0
        self.committed_count = 0
        self.invalid_reported: set[str] = set()


class Sender(threading.Thread):
    """The background thread of one TrainingLogger."""

    def __init__(
        self,
        job_id: str,
        buffer: deque,
        channel: grpc.Channel,
        metadata: Any,
        spool: Spool,
        settings: LoggerSettings,
        rank: int,
    ) -> None:
        super().__init__(name=f"trainingplatform-telemetry-sender[{job_id}]", daemon=True)
        self.job_id = job_id
        self.settings = settings
        self.wake = threading.Event()
        self._buffer = buffer
        self._channel = channel
        self._stub = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
        self._metadata = metadata
        self._spool = spool
        self._rank = rank
        self._metrics = _Kind("metrics")
        self._logs = _Kind("logs")
        self._calls: deque[_Call] = deque()
        self._known_keys: set[str] = set()
        self._budget = settings.max_batch_bytes - 16 - 4 * len(job_id)
        self._connected = False
        self._error: str | None = None
        self._attempt = 0
        self._retry_at = 0.0
        self._outage_logged = False
        self._numbering_checked = False
        self._last_poll = 0.0
        self._barrier_waiting = False
        self._state_dirty = False
        self._flush_now = False
        self._close_deadline: float | None = None
        self._dropped_logged = False
        self.duplicates = 0
        self.spooled = 0
        self.dropped = 0
        self.invalid = 0
        self.replayed = 0
        self.calls_delivered = 0
        self.calls_failed = 0
        self.reconnects = 0
        self._load_spool()

    # -- the caller's side (any thread) --------------------------------------------------------------------------

    def request_flush(self) -> None:
        """Sends partial batches now instead of at the next tick."""
        self._flush_now = True
        self.wake.set()

    def request_close(self, timeout: float) -> None:
        """Asks the thread to deliver what it can within `timeout` seconds, then spool the rest and stop."""
        self._close_deadline = time.monotonic() + timeout
        self.wake.set()

    def report(self) -> DeliveryReport:
        """A snapshot of the counters (ints read without a lock; each is consistent on its own)."""
        spool = self._spool
        return DeliveryReport(
            logged_metrics=self._metrics.logged,
            logged_logs=self._logs.logged,
            committed_metrics=self._metrics.committed_count,
            committed_logs=self._logs.committed_count,
            duplicates=self.duplicates,
            spooled=self.spooled,
            dropped=self.dropped,
            invalid=self.invalid,
            replayed=self.replayed,
            pending_metrics=len(self._metrics.memory) + spool.pending["metrics"],
            pending_logs=len(self._logs.memory) + spool.pending["logs"],
            calls_delivered=self.calls_delivered,
            calls_pending=sum(1 for call in list(self._calls) if call.method is not None),
            calls_failed=self.calls_failed,
            reconnects=self.reconnects,
            error=self._error,
        )

    # -- start and persistence -------------------------------------------------------------------------------------

    def _load_spool(self) -> None:
        state = self._spool.state
        for kind in (self._metrics, self._logs):
            saved = state.get(kind.name, {})
            kind.assigned = kind.base = max(int(saved.get("assigned", 0)), self._spool.highest_sequence(kind.name))
            # Records are append-only, so a partly committed one is trimmed again from the saved cursor.
            kind.committed = int(saved.get("committed", 0))
            self._spool.trim(kind.name, kind.committed)
            self.replayed += self._spool.pending[kind.name]
        for saved_call in state.get("calls", []):
            request_type = CALL_REQUESTS.get(saved_call.get("method"))
            if request_type is None:
                continue
            request = request_type.FromString(base64.b64decode(saved_call["request"]))
            self._calls.append(
                _Call(saved_call["method"], request, int(saved_call["metric_barrier"]), int(saved_call["log_barrier"]))
            )
        if self.replayed or self._calls:
            _LOG.info(
                "job %s: replaying %d points and %d calls left in the spool %s by an earlier process",
                self.job_id,
                self.replayed,
                len(self._calls),
                self._spool.directory,
            )

    def _save_state(self) -> None:
        calls = [
            {
                "method": call.method,
                "request": base64.b64encode(call.request.SerializeToString()).decode("ascii"),
                "metric_barrier": call.metric_barrier,
                "log_barrier": call.log_barrier,
            }
            for call in self._calls
            if call.method is not None and call.request is not None
        ]
        self._spool.state.update(
            {
                "metrics": {"assigned": self._metrics.assigned, "committed": self._metrics.committed},
                "logs": {"assigned": self._logs.assigned, "committed": self._logs.committed},
                "calls": calls,
            }
        )
        try:
            self._spool.save_state()
            self._state_dirty = False
        except OSError as exc:
            _LOG.error("job %s: cannot write the spool state (%s)", self.job_id, exc)

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            # Ask the cursor before numbering anything, so a lost spool state cannot reuse committed sequences.
            self._connect()
            self._loop()
        except Exception:
            _LOG.exception("job %s: the telemetry sender failed; undelivered points stay in the spool", self.job_id)
        finally:
            self._finish()

    def _loop(self) -> None:
        interval = self.settings.flush_interval_s
        next_tick = time.monotonic() + interval
        while True:
            now = time.monotonic()
            delay = next_tick - now
            if self._barrier_waiting and self._connected:
                # A flush or a status waits for the cursor: ask it more often than once per tick.
                delay = min(delay, 0.01)
            if delay > 0:
                self.wake.wait(delay)
            self.wake.clear()
            now = time.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = now + interval
            partial = tick or self._flush_now or self._close_deadline is not None
            self._flush_now = False
            self._drain()
            if self._error is None:
                self._deliver(partial, now)
            self._release_waiters()
            if not self._connected:
                # Unreachable or stopped: move memory to disk so an outage of minutes costs no memory and no data.
                self._spill()
            elif (len(self._metrics.memory) > self.settings.memory_buffer_points) or (
                len(self._logs.memory) > self.settings.memory_buffer_points
            ):
                self._spill()
            if self._state_dirty:
                self._save_state()
            if self._close_deadline is not None and (
                self._all_delivered() or self._error is not None or time.monotonic() >= self._close_deadline
            ):
                return

    def _deliver(self, partial: bool, now: float) -> None:
        if not self._connected:
            if now < self._retry_at:
                return
            self._connect()
            if not self._connected:
                return
        self._check_streams()
        if self._connected:
            self._send(self._metrics, partial)
            self._send(self._logs, partial)
        if self._connected and self._cursor_due(now):
            self._poll_cursor()
        if self._connected:
            self._deliver_calls()

    def _all_delivered(self) -> bool:
        return (
            not self._buffer  # logged after this iteration's drain: not even numbered yet
            and self._lowest(self._metrics) is None
            and self._lowest(self._logs) is None
            and all(call.method is None for call in self._calls)
        )

    # -- numbering -------------------------------------------------------------------------------------------------

    def _drain(self) -> None:
        buffer = self._buffer
        metrics = self._metrics
        logs = self._logs
        memory_limit = self.settings.memory_buffer_points
        while True:
            try:
                item = buffer.popleft()
            except IndexError:
                break
            tag = item[0]
            if tag == METRIC:
                point = self._check_metric(item)
                if point is not None:
                    metrics.assigned += 1
                    metrics.logged += 1
                    metrics.memory.append((metrics.assigned, *point))
                    if len(metrics.memory) > memory_limit:
                        self._save_state()
                        self._spill_kind(metrics)
            elif tag == LOG:
                record = self._check_log(item)
                if record is not None:
                    logs.assigned += 1
                    logs.logged += 1
                    logs.memory.append((logs.assigned, *record))
                    if len(logs.memory) > memory_limit:
                        self._save_state()
                        self._spill_kind(logs)
            elif tag == CALL:
                self._calls.append(_Call(item[1], item[2], metrics.assigned, logs.assigned))
            elif tag == FLUSH:
                self._calls.append(_Call(None, None, metrics.assigned, logs.assigned, waiter=item[1]))
                if self._error is not None:
                    item[1].finish(False)
            self._state_dirty = True
        if self._state_dirty:
            # The highest sequence is on disk before any point carrying it leaves memory (sent or spooled).
            self._save_state()

    def _invalid(self, kind: _Kind, problem: str) -> None:
        self.invalid += 1
        if problem not in kind.invalid_reported:
            kind.invalid_reported.add(problem)
            _LOG.warning("job %s: %s refused before sending: %s (logged once)", self.job_id, kind.name, problem)

    def _check_metric(self, item: tuple) -> tuple | None:
        _, key, value, step, epoch, wall = item
        if type(key) is not str or key not in self._known_keys:
            if not _valid_key(key):
                self._invalid(self._metrics, f"a key must be 1 to {_MAX_KEY_CHARS} characters, no control characters")
                return None
            if len(self._known_keys) >= _KNOWN_KEYS_LIMIT:
                self._known_keys.clear()
            self._known_keys.add(key)
        if value is None:
            self._invalid(self._metrics, f"the value of {key!r} is not a number")
            return None
        position = self._position(self._metrics, step, epoch)
        if position is None:
            return None
        return key, value, position[0], position[1], wall

    def _check_log(self, item: tuple) -> tuple | None:
        _, message, level, epoch, step, wall = item
        position = self._position(self._logs, step, epoch)
        if position is None:
            return None
        if not message.isascii():
            # Lone surrogates cannot be encoded as UTF-8 and would make the whole batch unbuildable.
            message = message.encode("utf-8", "replace").decode("utf-8")
        return message, level, position[1], position[0], wall

    def _position(self, kind: _Kind, step: object, epoch: object) -> tuple[int | None, int | None] | None:
        """(step, epoch) as ints in the int64 range at least 0, or None (counted invalid)."""
        try:
            step = None if step is None else int(step)
            epoch = None if epoch is None else int(epoch)
        except (TypeError, ValueError):
            self._invalid(kind, "step and epoch must be integers")
            return None
        if any(value is not None and not 0 <= value < 2**63 for value in (step, epoch)):
            self._invalid(kind, "step and epoch must be between 0 and 2**63 - 1")
            return None
        return step, epoch

    # -- connection ------------------------------------------------------------------------------------------------

    def _connect(self) -> None:
        try:
            cursor = self._stub.GetStreamCursor(
                telemetry_pb2.GetStreamCursorRequest(job_id=self.job_id),
                metadata=self._metadata,
                timeout=self.settings.rpc_timeout_s,
            )
        except grpc.RpcError as exc:
            self._rpc_failed(exc, "GetStreamCursor")
            return
        if not self._numbering_checked:
            self._numbering_checked = True
            self._check_numbering(self._metrics, cursor.last_metric_sequence)
            self._check_numbering(self._logs, cursor.last_log_sequence)
        for kind, sequence in ((self._metrics, cursor.last_metric_sequence), (self._logs, cursor.last_log_sequence)):
            self._advance(kind, sequence)
            kind.sent = max(kind.committed, sequence)
        self._last_poll = time.monotonic()
        if self._outage_logged:
            self.reconnects += 1
            _LOG.warning(
                "job %s: backend reachable again; resending from metric %d / log %d",
                self.job_id,
                cursor.last_metric_sequence,
                cursor.last_log_sequence,
            )
        self._connected = True
        self._attempt = 0
        self._outage_logged = False

    def _check_numbering(self, kind: _Kind, cursor: int) -> None:
        """Moves our numbering above a cursor that is ahead of what the spool state remembers (state lost)."""
        if cursor <= kind.base:
            return
        shift = cursor - kind.base
        if self._spool.highest_sequence(kind.name) > kind.base:
            _LOG.error(
                "job %s: the backend already holds %s up to %d but the spool numbered from %d; "
                "points spooled since may be taken for duplicates",
                self.job_id,
                kind.name,
                cursor,
                kind.base,
            )
        _LOG.warning(
            "job %s: the spool state knew %s up to %d, the backend %d; numbering continues after %d",
            self.job_id,
            kind.name,
            kind.base,
            cursor,
            cursor,
        )
        kind.memory = deque((point[0] + shift, *point[1:]) for point in kind.memory)
        kind.assigned += shift
        for call in self._calls:
            if kind is self._metrics and call.metric_barrier > kind.base:
                call.metric_barrier += shift
            if kind is self._logs and call.log_barrier > kind.base:
                call.log_barrier += shift
        kind.base = cursor
        self._save_state()

    def _rpc_failed(self, exc: grpc.RpcError, what: str) -> None:
        """Handles a failed call or a broken stream: a final error stops delivery, anything else reconnects."""
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code in _FINAL_CODES:
            self._fail(f"{what}: {code.name}: {details}")
            return
        self._disconnect()
        delay_bound = min(
            self.settings.reconnect_max_backoff_s,
            self.settings.reconnect_initial_backoff_s * self.settings.reconnect_backoff_multiplier**self._attempt,
        )
        delay = delay_bound * (1 - self.settings.reconnect_jitter * random.random())
        self._attempt += 1
        self._retry_at = time.monotonic() + delay
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

    def _fail(self, message: str) -> None:
        self._disconnect()
        self._error = message
        _LOG.error(
            "job %s: the backend refused telemetry for good (%s); nothing more is sent, "
            "points stay in the spool %s for a later replay",
            self.job_id,
            message,
            self._spool.directory,
        )
        for call in self._calls:
            if call.waiter is not None:
                call.waiter.finish(False)

    def _disconnect(self) -> None:
        self._connected = False
        self._barrier_waiting = False
        for kind in (self._metrics, self._logs):
            if kind.stream is not None:
                kind.stream.cancel()
                kind.stream = None

    def _check_streams(self) -> None:
        for kind in (self._metrics, self._logs):
            stream = kind.stream
            if stream is None or not stream.finished or stream.half_closed:
                continue
            kind.stream = None
            exc = stream.future.exception() if not stream.future.cancelled() else None
            if exc is None:
                # The server ended the call on its own: resume from the cursor like after any broken stream.
                response = stream.future.result()
                self.duplicates += response.duplicates_ignored
                self._advance(kind, response.last_committed_sequence)
                self._disconnect()
                self._retry_at = time.monotonic()
                return
            self._rpc_failed(exc, f"Stream{kind.name.capitalize()}")
            return

    # -- sending ---------------------------------------------------------------------------------------------------

    def _lowest(self, kind: _Kind) -> int | None:
        lowest = self._spool.lowest_sequence(kind.name)
        if lowest is not None:
            return lowest
        return kind.memory[0][0] if kind.memory else None

    def _send(self, kind: _Kind, partial: bool) -> None:
        while kind.stream is None or kind.stream.in_flight < _STREAM_WINDOW:
            message = self._next_message(kind, partial)
            if message is None:
                return
            request, last = message
            if kind.stream is None:
                method = self._stub.StreamMetrics if kind is self._metrics else self._stub.StreamLogs
                kind.stream = _Stream(method, self._metadata, self.wake.set)
            kind.stream.send(request)
            kind.sent = last

    def _next_message(self, kind: _Kind, partial: bool) -> tuple[Message, int] | None:
        record = self._spool.first_record_after(kind.name, kind.sent)
        if record is not None:
            request = self._request_type(kind).FromString(self._spool.read(record))
            points = request.points if kind is self._metrics else request.records
            skip = 0
            while skip < len(points) and points[skip].sequence <= kind.sent:
                skip += 1
            del points[:skip]
            request.job_id = self.job_id
            return request, record.last
        memory = kind.memory
        if not memory or memory[-1][0] <= kind.sent:
            return None
        start = max(0, kind.sent + 1 - memory[0][0])
        batch, full = self._take_batch(kind, itertools.islice(memory, start, None))
        if not full and not partial:
            return None
        return self._build(kind, batch), batch[-1][0]

    def _take_batch(self, kind: _Kind, points: Iterator[tuple]) -> tuple[list[tuple], bool]:
        """The next points that fit one message; `full` says whether a limit (not the end) cut the batch."""
        batch: list[tuple] = []
        size = 0
        max_points = self.settings.max_batch_points
        overhead = _METRIC_OVERHEAD if kind is self._metrics else _LOG_OVERHEAD
        for point in points:
            text = point[1]
            point_size = overhead + (len(text) if text.isascii() else 4 * len(text))
            if batch and size + point_size > self._budget:
                return batch, True
            batch.append(point)
            size += point_size
            if len(batch) >= max_points:
                return batch, True
        return batch, False

    def _request_type(self, kind: _Kind) -> type[Message]:
        return telemetry_pb2.StreamMetricsRequest if kind is self._metrics else telemetry_pb2.StreamLogsRequest

    def _build(self, kind: _Kind, batch: list[tuple], job_id: str | None = None) -> Message:
        job_id = self.job_id if job_id is None else job_id
        if kind is self._metrics:
            request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
            add = request.points.add
            for sequence, key, value, step, epoch, wall in batch:
                add(key=key, value=value, step=step, epoch=epoch, wall_time=wall, sequence=sequence)
            return request
        request = telemetry_pb2.StreamLogsRequest(job_id=job_id)
        add = request.records.add
        rank = self._rank
        for sequence, message, level, epoch, step, wall in batch:
            add(level=level, message=message, epoch=epoch, step=step, wall_time=wall, sequence=sequence, rank=rank)
        return request

    # -- the cursor --------------------------------------------------------------------------------------------------

    def _cursor_due(self, now: float) -> bool:
        in_flight = self._metrics.sent > self._metrics.committed or self._logs.sent > self._logs.committed
        if not in_flight:
            return False
        if self._barrier_waiting or self._close_deadline is not None:
            return True
        half_memory = self.settings.memory_buffer_points // 2
        if len(self._metrics.memory) > half_memory or len(self._logs.memory) > half_memory:
            return True
        return now - self._last_poll >= self.settings.cursor_poll_interval_s

    def _poll_cursor(self) -> None:
        try:
            cursor = self._stub.GetStreamCursor(
                telemetry_pb2.GetStreamCursorRequest(job_id=self.job_id),
                metadata=self._metadata,
                timeout=self.settings.rpc_timeout_s,
            )
        except grpc.RpcError as exc:
            self._rpc_failed(exc, "GetStreamCursor")
            return
        self._last_poll = time.monotonic()
        self._advance(self._metrics, cursor.last_metric_sequence)
        self._advance(self._logs, cursor.last_log_sequence)

    def _advance(self, kind: _Kind, cursor: int) -> None:
        """Forgets what the committed cursor covers."""
        if cursor <= kind.committed:
            return
        kind.committed = cursor
        self._state_dirty = True
        removed = self._spool.trim(kind.name, cursor)
        memory = kind.memory
        while memory and memory[0][0] <= cursor:
            memory.popleft()
            removed += 1
        kind.committed_count += removed

    # -- unary calls -------------------------------------------------------------------------------------------------

    def _barrier_met(self, call: _Call) -> bool:
        for kind, barrier in ((self._metrics, call.metric_barrier), (self._logs, call.log_barrier)):
            lowest = self._lowest(kind)
            if lowest is not None and lowest <= barrier:
                return False
        return True

    def _release_waiters(self) -> None:
        """Finishes the flush requests at the head of the queue whose points are all committed (no network)."""
        while self._calls and self._calls[0].method is None and self._barrier_met(self._calls[0]):
            self._calls.popleft().waiter.finish(self.dropped == 0)

    def _deliver_calls(self) -> None:
        self._barrier_waiting = False
        while self._calls:
            self._release_waiters()
            if not self._calls:
                return
            call = self._calls[0]
            if call.method is None or not self._barrier_met(call):
                self._barrier_waiting = True
                return
            try:
                getattr(self._stub, call.method)(
                    call.request, metadata=self._metadata, timeout=self.settings.rpc_timeout_s
                )
            except grpc.RpcError as exc:
                if exc.code() not in _CALL_REFUSED_CODES:
                    self._rpc_failed(exc, call.method)
                    return
                self.calls_failed += 1
                _LOG.error(
                    "job %s: %s refused (%s: %s); not retried", self.job_id, call.method, exc.code().name, exc.details()
                )
            else:
                self.calls_delivered += 1
            self._calls.popleft()
            self._state_dirty = True

    # -- spooling and the end ----------------------------------------------------------------------------------------

    def _spill(self) -> None:
        self._spill_kind(self._metrics)
        self._spill_kind(self._logs)

    def _spill_kind(self, kind: _Kind) -> None:
        """Moves every point in memory to the spool (or counts it dropped past the cap)."""
        if not kind.memory:
            return
        points = list(kind.memory)
        kind.memory = deque()
        start = 0
        while start < len(points):
            batch, _ = self._take_batch(kind, points[start : start + self.settings.max_batch_points])
            start += len(batch)
            payload = self._build(kind, batch, job_id="").SerializeToString()
            if self._spool.append(kind.name, payload, batch[0][0], batch[-1][0], len(batch)):
                self.spooled += len(batch)
                continue
            self.dropped += len(batch)
            if not self._dropped_logged:
                self._dropped_logged = True
                _LOG.error(
                    "job %s: the spool %s reached its cap of %d bytes; points are dropped (counted in the "
                    "delivery report, logged once)",
                    self.job_id,
                    self._spool.directory,
                    self._spool.max_bytes,
                )

    def _finish(self) -> None:
        try:
            self._drain()
            if self._connected:
                self._close_streams()
            self._disconnect()
            self._spill()
            self._save_state()
        except Exception:
            _LOG.exception("job %s: error while closing the telemetry sender", self.job_id)
        finally:
            for call in self._calls:
                if call.waiter is not None:
                    call.waiter.finish(False)
            self._spool.close()
            self._channel.close()

    def _close_streams(self) -> None:
        """Half-closes the streams and reads their responses: the committed totals and the duplicates."""
        open_streams = [kind for kind in (self._metrics, self._logs) if kind.stream is not None]
        for kind in open_streams:
            kind.stream.half_close()
        deadline = max(self._close_deadline or 0.0, time.monotonic() + 0.5)
        for kind in open_streams:
            try:
                response = kind.stream.future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (grpc.RpcError, grpc.FutureTimeoutError, grpc.FutureCancelledError) as exc:
                _LOG.debug("job %s: %s stream ended without a response (%s)", self.job_id, kind.name, exc)
                continue
            self.duplicates += response.duplicates_ignored
            self._advance(kind, response.last_committed_sequence)
