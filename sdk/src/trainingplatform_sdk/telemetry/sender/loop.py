"""The TrainingLogger's background thread: takes what the caller logged, numbers it, and has it delivered.

The caller's thread only appends tuples to a deque. This thread alone takes them out, numbers them (so the
numbering follows the deque's total order even with several logging threads), and owns every other structure,
so nothing here needs a lock. A point is forgotten only when the backend's committed cursor has passed it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import grpc

from trainingplatform_sdk.telemetry.report import DeliveryReport
from trainingplatform_sdk.telemetry.sender.buffer import CALL, LOG, METRIC, BufferItem
from trainingplatform_sdk.telemetry.sender.calls import CallQueue
from trainingplatform_sdk.telemetry.sender.codec import LogCodec, MetricCodec
from trainingplatform_sdk.telemetry.sender.connection import Connection, ConnectionState, Metadata
from trainingplatform_sdk.telemetry.sender.delivery import Delivery
from trainingplatform_sdk.telemetry.sender.outbox import AnyOutbox, Outbox
from trainingplatform_sdk.telemetry.sender.state import SavedState
from trainingplatform_sdk.telemetry.sender.validation import InvalidPoint, Validator
from trainingplatform_sdk.telemetry.settings import LoggerSettings
from trainingplatform_sdk.telemetry.spool import Spool

_LOG = logging.getLogger("trainingplatform_sdk.logger")

# How often the cursor is asked while a flush or a call waits for it (otherwise once per tick at most).
_BARRIER_POLL_S = 0.01
# Least time the streams' final responses get at close, even past the close deadline.
_CLOSE_RESPONSE_WAIT_S = 0.5


class Sender(threading.Thread):
    """The background thread of one TrainingLogger."""

    def __init__(
        self,
        job_id: str,
        buffer: deque[BufferItem],
        channel: grpc.Channel,
        metadata: Metadata,
        spool: Spool,
        settings: LoggerSettings,
        rank: int,
    ) -> None:
        """Takes up what an earlier process left in the spool; the thread starts with `start()`."""
        super().__init__(name=f"trainingplatform-telemetry-sender[{job_id}]", daemon=True)
        self.job_id = job_id
        self.settings = settings
        #: Set to make the thread look at its buffer and streams before its next tick.
        self.wake = threading.Event()
        self._buffer = buffer
        self._spool = spool
        self._metrics = Outbox(MetricCodec(job_id, settings), spool)
        self._logs = Outbox(LogCodec(job_id, settings, rank), spool)
        self._outboxes: tuple[AnyOutbox, ...] = (self._metrics, self._logs)
        for outbox in self._outboxes:
            outbox.memory_limit = settings.memory_buffer_points
        self._calls = CallQueue(self._outboxes)
        self._state = SavedState(job_id, spool, self._metrics, self._logs, self._calls)
        self._connection = Connection(job_id, channel, metadata, settings, spool.directory, self.wake.set)
        self._delivery = Delivery(self._connection, self._metrics, self._logs, self._calls, self._state, settings)
        self._validator = Validator()
        self._flush_now = False
        self._close_deadline: float | None = None
        self._dropped_logged = False
        #: Called on this thread when it ends, for whatever reason (the logger stops buffering for it).
        self.on_exit: Callable[[], None] | None = None
        self._calls.load(spool.state.get("calls", []))
        replayed = self._metrics.replayed + self._logs.replayed
        if replayed or len(self._calls):
            _LOG.info(
                "job %s: replaying %d points and %d calls left in the spool %s by an earlier process",
                job_id,
                replayed,
                len(self._calls),
                spool.directory,
            )

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
        metrics, logs = self._metrics, self._logs
        return DeliveryReport(
            logged_metrics=metrics.logged,
            logged_logs=logs.logged,
            committed_metrics=metrics.committed_count,
            committed_logs=logs.committed_count,
            duplicates=self._delivery.duplicates,
            spooled=metrics.spooled + logs.spooled,
            dropped=metrics.dropped + logs.dropped,
            invalid=metrics.invalid + logs.invalid,
            replayed=metrics.replayed + logs.replayed,
            pending_metrics=metrics.pending,
            pending_logs=logs.pending,
            calls_delivered=self._calls.delivered,
            calls_pending=self._calls.count_calls(),
            calls_failed=self._calls.failed,
            reconnects=self._connection.reconnects,
            error=self._connection.error,
        )

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            # Ask the cursor before numbering anything, so a lost spool state cannot reuse committed sequences (the
            # answer comes on a later iteration: nothing is spilled until then, and memory renumbered if needed).
            self._delivery.connect()
            self._loop()
        except Exception:
            _LOG.exception("job %s: the telemetry sender failed; undelivered points stay in the spool", self.job_id)
        finally:
            self._finish()
            if self.on_exit is not None:
                self.on_exit()

    def _loop(self) -> None:
        interval = self.settings.flush_interval_s
        memory_limit = self.settings.memory_buffer_points
        connection = self._connection
        next_tick = time.monotonic() + interval
        while True:
            now = time.monotonic()
            delay = next_tick - now
            if self._calls.waiting and connection.connected:
                delay = min(delay, _BARRIER_POLL_S)
            if delay > 0:
                self.wake.wait(delay)
            self.wake.clear()
            now = time.monotonic()
            tick = now >= next_tick
            if tick:
                next_tick = now + interval
            closing = self._close_deadline is not None
            partial = tick or self._flush_now or closing
            self._flush_now = False
            self._drain()
            if connection.state is not ConnectionState.FAILED:
                self._delivery.deliver(partial, now, closing)
            self._calls.release_flushes()
            # Unreachable or stopped: move memory to disk so an outage of minutes costs no memory and no data.
            if (
                connection.unreachable
                or len(self._metrics.memory) > memory_limit
                or len(self._logs.memory) > memory_limit
            ):
                self._spill(*self._outboxes)
            if self._state.dirty:
                self._state.save()
            if self._close_deadline is not None and (
                self._all_delivered()
                or connection.state is ConnectionState.FAILED
                or time.monotonic() >= self._close_deadline
            ):
                return

    def _all_delivered(self) -> bool:
        return (
            not self._buffer  # logged after this iteration's drain: not even numbered yet
            and self._metrics.lowest() is None
            and self._logs.lowest() is None
            and self._calls.only_flushes()
        )

    def _drain(self) -> None:
        """Numbers the points the caller logged since the last drain and queues its calls and flushes."""
        buffer = self._buffer
        metrics = self._metrics
        logs = self._logs
        state = self._state
        check_metric = self._validator.metric
        check_log = self._validator.log
        memory_limit = self.settings.memory_buffer_points
        while True:
            try:
                item = buffer.popleft()
            except IndexError:
                break
            if item[0] == METRIC:
                try:
                    point = check_metric(item)
                except InvalidPoint as exc:
                    metrics.refuse(str(exc))
                else:
                    metrics.assigned += 1
                    metrics.logged += 1
                    metrics.memory.append((metrics.assigned, *point))
                    if len(metrics.memory) > memory_limit:
                        state.reserve()
                        self._spill(metrics)
            elif item[0] == LOG:
                try:
                    record = check_log(item)
                except InvalidPoint as exc:
                    logs.refuse(str(exc))
                else:
                    logs.assigned += 1
                    logs.logged += 1
                    logs.memory.append((logs.assigned, *record))
                    if len(logs.memory) > memory_limit:
                        state.reserve()
                        self._spill(logs)
            elif item[0] == CALL:
                self._calls.add_call(item[1], item[2])
            else:
                self._calls.add_flush(item[1])
                if self._connection.error is not None:
                    item[1].finish(False)
            state.dirty = True
        if state.dirty:
            # The highest sequence is on disk before any point carrying it leaves memory (sent or spooled).
            state.save()

    # -- spooling and the end ----------------------------------------------------------------------------------------

    def _spill(self, *outboxes: AnyOutbox, force: bool = False) -> None:
        """Moves the points in memory to the spool; points past its cap, or past memory_buffer_points while the
        spool cannot be written, are dropped (counted, logged once)."""
        for outbox in outboxes:
            if outbox.spill(force) and not self._dropped_logged:
                self._dropped_logged = True
                if outbox.spool_error is not None:
                    _LOG.error(
                        "job %s: the spool %s cannot be written (%s) and %d points are in memory; points are "
                        "dropped (counted in the delivery report, logged once)",
                        self.job_id,
                        self._spool.directory,
                        outbox.spool_error,
                        outbox.memory_limit,
                    )
                else:
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
            if self._connection.connected:
                self._delivery.close_streams(
                    max(self._close_deadline or 0.0, time.monotonic() + _CLOSE_RESPONSE_WAIT_S)
                )
            self._delivery.disconnect()
            self._spill(*self._outboxes, force=True)
            if any([outbox.drop_memory() for outbox in self._outboxes]) and not self._dropped_logged:
                self._dropped_logged = True
                _LOG.error("job %s: points the spool could not take are dropped (counted, logged once)", self.job_id)
            self._state.release()
        except Exception:
            _LOG.exception("job %s: error while closing the telemetry sender", self.job_id)
        finally:
            self._calls.finish_flushes(False)
            self._spool.close()
            self._connection.close()
