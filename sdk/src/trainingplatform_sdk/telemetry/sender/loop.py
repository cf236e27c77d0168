"""The TrainingLogger's background thread: takes what the caller logged, numbers it, and has it delivered.

The caller's thread only appends tuples to a deque. This thread alone takes them out, numbers them (so the
numbering follows the deque's total order even with several logging threads), and owns every other structure,
so nothing here needs a lock. A point is forgotten only when the backend's committed cursor has passed it.

The thread sleeps until something is due: the flush deadline of the points not yet sent, a timer (cursor poll,
reconnect, close), or an event (a call ended, a stream's window freed, a flush or a call). While points keep coming
it looks at the buffer once per interval (no wake-up costs the caller anything); after ACTIVE_INTERVALS quiet
intervals it sleeps until the caller's next point wakes it (`wake_at_length` 1), and that point goes at once when
no partial batch went during the last interval. So a point never waits more than the interval, a trainer logging
now and then gets each point out at once, one logging fast sends at most one partial message per interval and
stream, and an idle logger wakes about once a second. The interval is `flush_interval_s`, shorter while more than
`target_batch_points` come per `flush_interval_s` (down to MIN_FLUSH_INTERVAL_S): a message's points reach a
subscriber once the backend has committed and fanned out all of them, so at a high rate smaller messages are
sooner. Whenever the thread sleeps longer than an interval the caller can wake it, even with a batch that cannot go
now (backend away, window full): a caller logging on is never left to fill its buffer unread.

While nobody watches the job live (`unwatched_flush_interval_s`), the thread does not look at the buffer each
interval: it sleeps until the points are due, and the caller wakes it when its buffer holds a full message
(`wake_at_length` = `max_batch_points`). A trainer logging every step then costs one wake-up per long interval
(and one for the cursor's answer) instead of one per short interval: each wake-up takes CPU from the training's
cores and preempts its thread. The cursor is read every `unwatched_cursor_poll_interval_s` then (`Delivery`): the
backend ends the job's streams when someone subscribes, and the sender resumes from the cursor, which says watched.

The thread does not pause on purpose during long work: the interpreter's switch interval shares the GIL. Pausing
(a sleep every 0.5 ms, tried in 94990a0) cut `log_metric`'s p99.9 from about 38 to 28 µs but let a caller logging
in a tight loop outrun the drain on a loaded machine, and the caller's memory grew past its bound.
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

# How often the cursor is asked while a flush or a call waits for it (otherwise once per poll interval).
_BARRIER_POLL_S = 0.01
# Least time the streams' final responses get at close, even past the close deadline.
_CLOSE_RESPONSE_WAIT_S = 0.5
# Longest sleep of the thread when nothing is due (housekeeping: a spool to retry, memory to spill, the state).
IDLE_WAKE_S = 1.0
# Shortest flush interval the sender adapts to while points come fast (`LoggerSettings.target_batch_points`).
MIN_FLUSH_INTERVAL_S = 0.01
# Flush intervals after the last point during which the thread looks at the buffer each interval on its own;
# after them it sleeps until the caller's next point wakes it (`Sender.wake_at_length`).
ACTIVE_INTERVALS = 10
# Least time between two moves of memory to the spool during an outage: an outage leaves about one spool record per
# second and stream rather than one per flush interval (each record costs memory while it is spooled).
OUTAGE_SPILL_INTERVAL_S = 1.0


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
        """Takes up what an earlier process left in the spool and saves it back; the thread starts with `start()`.

        Raises:
            OSError: The spool state cannot be written (`SavedState.save_at_start`).
        """
        super().__init__(name=f"trainingplatform-telemetry-sender[{job_id}]", daemon=True)
        self.job_id = job_id
        self.settings = settings
        #: Set to make the thread look at its buffer and streams before its next tick.
        self.wake = threading.Event()
        #: The length of the caller's buffer at which the caller must wake the thread (`point_logged`): 0 while the
        #: thread looks at the buffer within a flush interval on its own, 1 while it sleeps longer (the next point
        #: wakes it), `max_batch_points` while it waits the long interval of a job nobody watches.
        self.wake_at_length = 0
        #: When the oldest point not yet sent must go (a partial batch), None when every point is sent.
        self._due: float | None = None
        #: When partial batches last went: the next go `_interval` later at the earliest.
        self._flushed_at = 0.0
        #: The flush interval in force: `flush_interval_s`, shorter while points come fast (`_adapt_interval`).
        self._interval = settings.flush_interval_s
        #: The window over which the rate is measured (`_adapt_interval`): when it began, and the items since.
        self._window_start = 0.0
        self._window_items = 0
        #: Until when the thread looks at the buffer each interval on its own (points came lately).
        self._active_until = 0.0
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
        #: When memory last moved to the spool during an outage (`OUTAGE_SPILL_INTERVAL_S`).
        self._spilled_at = 0.0
        #: Called on this thread when it ends, for whatever reason (the logger stops buffering for it).
        self.on_exit: Callable[[], None] | None = None
        self._calls.load(spool.state.get("calls", []))
        self._state.save_at_start()
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

    def point_logged(self) -> None:
        """Wakes the thread: the caller's buffer reached `wake_at_length`. The caller calls it after an append that
        made the buffer that long (at least that long after appending several), and only then."""
        self.wake.set()

    def request_flush(self) -> None:
        """Sends partial batches now instead of at the next tick."""
        self._flush_now = True
        self.wake.set()

    def request_close(self, timeout: float) -> None:
        """Asks the thread to deliver what it can within `timeout` seconds, then spool the rest and stop."""
        self._close_deadline = time.monotonic() + timeout
        self.wake.set()

    @property
    def refused(self) -> bool:
        """Whether the backend refused telemetry for good (a bad token, an unknown job): nothing more is sent."""
        return self._connection.state is ConnectionState.FAILED

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
            # Ask the cursor before sending anything, so a new spool or a lost spool state cannot reuse committed
            # sequences: the answer comes on a later iteration, and whatever was numbered until then, in memory or
            # spooled (the backend may be away for long), is renumbered after the cursor if needed.
            self._delivery.connect()
            self._loop()
        except Exception:
            _LOG.exception("job %s: the telemetry sender failed; undelivered points stay in the spool", self.job_id)
        finally:
            self._finish()
            if self.on_exit is not None:
                self.on_exit()

    def _next_wake(self, now: float) -> float:
        """Seconds until something is due: a flush deadline, a look at the buffer, a cursor poll, a reconnect, the
        close deadline; sets `wake_at_length` for the caller."""
        delivery = self._delivery
        connection = self._connection
        settings = self.settings
        interval = self._interval
        wake_at = now + IDLE_WAKE_S
        # The caller's next point wakes us while the buffer is looked at: a point appended after the look sees it.
        self.wake_at_length = 1
        # Nobody watches: points wait the long interval, and the caller wakes us when a full message waits.
        unwatched = self._long_interval()
        if self._buffer:
            # Points wait in the caller's buffer: they are taken within an interval whether or not they can go now
            # (with the backend away they move to the spool), so the caller's memory stays bounded.
            if self._due is None:
                self._set_due(now)
            if not unwatched:
                wake_at = min(wake_at, now + interval)
        if self._due is not None and delivery.can_send():
            wake_at = min(wake_at, self._due)
        if now < self._active_until:
            # Points came lately: look at the buffer each interval rather than have the caller wake the thread (while
            # nobody watches, when the next partial batch would be due).
            look_at = now + interval
            if unwatched:
                look_at = max(look_at, self._flushed_at + settings.unwatched_flush_interval_s)
            wake_at = min(wake_at, look_at)
        if connection.connected:
            if self._calls.waiting:
                wake_at = min(wake_at, now + _BARRIER_POLL_S)
            poll_at = delivery.next_poll()
            if poll_at is not None:
                wake_at = min(wake_at, poll_at)
        elif connection.state is ConnectionState.DISCONNECTED and delivery.idle:
            wake_at = min(wake_at, connection.retry_at)
        if self._close_deadline is not None:
            wake_at = min(wake_at, self._close_deadline)
        # Asleep for longer than an interval: the caller must be able to wake us, whatever else is pending (a due
        # batch that cannot go, a reconnect in a while), or the buffer would grow unread until then. Compared as
        # times, not as `wake_at - now`: `now + 0.005 - now > 0.005` in floating point.
        if wake_at <= now + settings.flush_interval_s:
            self.wake_at_length = 0
        elif unwatched and (self._buffer or self._due is not None or now < self._active_until):
            self.wake_at_length = settings.max_batch_points
            # Set before the length is read: a caller that reached it before the set is seen here, one after sees it.
            if len(self._buffer) >= settings.max_batch_points:
                self.wake_at_length = 0
                return 0.0
        return wake_at - now

    def _set_due(self, now: float) -> None:
        # At once when no partial batch went for an interval (a trainer logging now and then gets its points out
        # without delay), else one interval after the last: at most one partial message per interval and stream.
        # While nobody watches the job live the interval is the longer `unwatched_flush_interval_s` (fewer
        # messages); the caller wakes the thread when a full message waits, so its memory stays bounded.
        interval = self.settings.unwatched_flush_interval_s if self._long_interval() else self._interval
        self._due = max(now, self._flushed_at + interval)

    def _long_interval(self) -> bool:
        """Whether partial batches wait `unwatched_flush_interval_s`: nobody watches the job live, and that interval
        is the longer one."""
        settings = self.settings
        return self._delivery.unwatched and settings.unwatched_flush_interval_s > settings.flush_interval_s

    def _adapt_interval(self, now: float, taken: int) -> None:
        """Counts `taken` drained items and, once a window of at least `flush_interval_s` is complete, sets the
        flush interval from the window's rate: so that a partial message carries about `target_batch_points`,
        between MIN_FLUSH_INTERVAL_S and `flush_interval_s`. A point's message waits for the backend to commit and
        fan out all of it, so at a high rate smaller messages, sent sooner, reach a live subscriber sooner; at a
        lower rate nothing changes. A burst of a few items (the metrics, summary and log line of an epoch's end)
        never shortens the interval: the rate is taken over a whole interval at least."""
        settings = self.settings
        self._window_items += taken
        if now < self._window_start + settings.flush_interval_s:  # compared as times (see `_next_wake`)
            return
        wanted = settings.target_batch_points * (now - self._window_start) / self._window_items
        self._interval = min(settings.flush_interval_s, max(MIN_FLUSH_INTERVAL_S, wanted))
        self._window_start, self._window_items = now, 0

    def _loop(self) -> None:
        interval = self.settings.flush_interval_s
        memory_limit = self.settings.memory_buffer_points
        connection = self._connection
        delivery = self._delivery
        while True:
            delay = self._next_wake(time.monotonic())
            if delay > 0:
                self.wake.wait(delay)
            self.wake.clear()
            self.wake_at_length = 0
            now = time.monotonic()
            closing = self._close_deadline is not None
            taken = self._drain()
            if taken:
                self._adapt_interval(now, taken)
                self._active_until = now + ACTIVE_INTERVALS * interval
                if self._due is None:
                    self._set_due(now)
            due = self._due
            # While nobody watches, a queued call (a status, a summary) does not wait the long interval for the
            # points logged before it. (Watched, the interval is short, and sending at once would let a log line
            # logged right after an epoch summary reach a live view before the summary does.)
            partial = (
                self._flush_now
                or closing
                or (due is not None and now >= due)
                or (delivery.unwatched and bool(self._calls))
            )
            self._flush_now = False
            if connection.state is not ConnectionState.FAILED:
                unwatched = delivery.unwatched
                delivery.deliver(partial, now, closing)
                if unwatched and not delivery.unwatched and self._due is not None:
                    self._set_due(now)  # someone watches now: what waits goes within the short interval
            if partial:
                self._flushed_at = now
            unsent = self._metrics.unsent() or self._logs.unsent()
            if partial and not unsent:
                self._due = None
            elif unsent and self._due is None:
                # Points already sent are unsent again: a stream broke or a message was refused as too large, and
                # the reconnect resends from the cursor. They go within an interval, not at the caller's next point
                # (a trainer in a long evaluation may log nothing for minutes).
                self._set_due(now)
            self._calls.release_flushes()
            # Unreachable or stopped: move memory to disk so an outage of minutes costs no memory and no data (at
            # most once per OUTAGE_SPILL_INTERVAL_S, unless memory is full: the thread wakes at least that often).
            if (
                (connection.unreachable and now >= self._spilled_at + OUTAGE_SPILL_INTERVAL_S)
                or len(self._metrics.memory) > memory_limit
                or len(self._logs.memory) > memory_limit
            ):
                self._spill(*self._outboxes)
                self._spilled_at = now
            self._state.save_if_due()
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

    def _drain(self) -> int:
        """Numbers the points the caller logged since the last drain and queues its calls and flushes; returns how
        many items it took."""
        buffer = self._buffer
        metrics = self._metrics
        logs = self._logs
        state = self._state
        check_metric = self._validator.metric
        check_log = self._validator.log
        memory_limit = self.settings.memory_buffer_points
        taken = 0
        while True:
            try:
                item = buffer.popleft()
            except IndexError:
                break
            taken += 1
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
                state.urgent = True
            else:
                self._calls.add_flush(item[1])
                if self._connection.error is not None:
                    item[1].finish(False)
            state.dirty = True
        # The end of the reserved block is on disk before any point numbered past it leaves memory (sent or
        # spooled), and a new call is on disk at once.
        state.save_if_due()
        return taken

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
            elif self._connection.state is ConnectionState.FAILED:
                # What the backend committed before refusing us for good is delivered, not pending.
                self._delivery.read_cursor_until(
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
