"""Live fan-out of committed telemetry to subscribers, in this process and across processes.

After each commit the telemetry service publishes an event to the hub. Metric and log batches carry their points,
so a subscriber that is caught up gets them straight from memory; every other event (status change, epoch
summary, a batch that contained duplicates, a notification from another backend process) is a *poke*: the
subscriber re-reads the database from its cursor. The database is always the source of truth, so a subscriber
can never miss or double an event; memory is only a shortcut.

Each subscriber has a bounded buffer (counted in points). A subscriber that falls behind overflows it: its
buffer is dropped, it is told (`Lagged`), and it continues from the database at its cursor. Ingest never waits
for a subscriber.

Across processes (several backends on one PostgreSQL) every commit sends
`NOTIFY tp_telemetry, '<instance>:<job>,<job>...'` inside its transaction; each backend LISTENs and pokes its own
subscribers of those jobs.

Whether a job is watched (`Hub.watched`) is known across processes too: every WATCH_ANNOUNCE_S, and at once on a
job's first subscriber, each backend with live subscribers sends `NOTIFY tp_watched, '<instance>:<job>,<job>...'`,
and the others hold that word for WATCH_TTL_S. A trainer's stream may land on one process and the job's subscriber
on another: GetStreamCursor tells the trainer whether anyone watches (it flushes and reads the cursor less often
when nobody does), and the commit of a watched job does not linger. When a job that nobody watched gets a
subscriber, every process that hears of it (at once here, by the announcement elsewhere) ends the job's open
telemetry streams with OK (`Hub.on_watch_started`): the trainer resumes from the cursor, which then says watched.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainingplatform_backend import metrics
from trainingplatform_backend.db import describe_error

log = logging.getLogger(__name__)

# Longest wait between two attempts to re-open the PostgreSQL LISTEN connection.
LISTEN_RECONNECT_MAX_DELAY_S = 10.0
# How often a backend process with live subscribers tells the others which jobs they watch, and how long the
# others hold that word: a subscriber is known everywhere within about WATCH_ANNOUNCE_S, and forgotten within
# WATCH_TTL_S of its end (or of its process's death).
WATCH_ANNOUNCE_S = 1.0
WATCH_TTL_S = 5.0


@dataclass(frozen=True)
class Batch:
    """Committed points of one stream kind, in sequence order, with no duplicate and no gap inside."""

    kind: str
    first_sequence: int
    last_sequence: int
    items: Any


POKE = "poke"

# Holes asked about per database query when a subscriber looks for points that filled them late.
HOLES_PER_QUERY = 100


class StreamPosition:
    """Where one subscription stands in one stream (metrics or logs).

    It has sent every committed sequence up to `high` except those in `holes`: inclusive ranges, in order, that
    were missing when it passed them. A point that fills a hole later is still sent (out of order) and its
    sequence leaves the hole. The cursor the subscription reports is `low()`, the contiguous low-water mark: the
    highest sequence at or below which nothing is missing. A subscriber resuming from it therefore gets every
    point it could have missed, late fills included; only points above a hole that is still open may come again.
    """

    __slots__ = ("high", "holes")

    def __init__(self, high: int) -> None:
        self.high = high
        self.holes: list[tuple[int, int]] = []

    def low(self) -> int:
        """The cursor to report: everything at or below it has been sent."""
        return self.holes[0][0] - 1 if self.holes else self.high

    def advance(self, sequences: Sequence[int]) -> None:
        """Records sent sequences above `high`, in increasing order; numbers skipped become holes."""
        if not sequences:
            return
        if sequences[0] == self.high + 1 and sequences[-1] - sequences[0] + 1 == len(sequences):
            self.high = sequences[-1]  # the common case: contiguous
            return
        high = self.high
        for sequence in sequences:
            if sequence > high + 1:
                self.holes.append((high + 1, sequence - 1))
            high = max(high, sequence)
        self.high = high

    def fill(self, sequences: Sequence[int]) -> None:
        """Takes sent sequences (increasing, below `high`) out of the holes."""
        index, remaining = 0, []
        for low, high in self.holes:
            start = low
            while index < len(sequences) and sequences[index] <= high:
                sequence = sequences[index]
                if sequence >= start:
                    if sequence > start:
                        remaining.append((start, sequence - 1))
                    start = sequence + 1
                index += 1
            if start <= high:
                remaining.append((start, high))
        self.holes = remaining

    def hole_chunks(self) -> list[list[tuple[int, int]]]:
        """The holes, a database query's worth at a time."""
        return [self.holes[i : i + HOLES_PER_QUERY] for i in range(0, len(self.holes), HOLES_PER_QUERY)]


class Subscriber:
    """One subscription's live buffer."""

    def __init__(self, capacity_points: int) -> None:
        self._capacity = capacity_points
        self._events: collections.deque[Batch | str] = collections.deque()
        self._size = 0
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.overflowed = False
        self.closed = False

    def offer(self, event: Batch | str) -> None:
        """Adds an event without ever blocking; on overflow the buffer is dropped and the subscriber flagged."""
        if self.overflowed:
            self.dropped += 1
            return
        weight = len(event.items) if isinstance(event, Batch) else 1
        if self._size + weight > self._capacity:
            self.dropped += len(self._events) + 1
            self._events.clear()
            self._size = 0
            self.overflowed = True
            metrics.SUBSCRIBER_LAGS.inc()
        else:
            self._events.append(event)
            self._size += weight
        self._wakeup.set()

    def close(self) -> None:
        """Ends the subscription (server shutdown)."""
        self.closed = True
        self._wakeup.set()

    async def wait(self) -> None:
        """Returns when there is something to do: events, an overflow, or the end."""
        if self._events or self.overflowed or self.closed:
            return
        self._wakeup.clear()
        await self._wakeup.wait()

    def drain(self) -> list[Batch | str]:
        """Takes every buffered event."""
        events = list(self._events)
        self._events.clear()
        self._size = 0
        return events

    def reset_overflow(self) -> int:
        """Clears the overflow flag; returns how many events were dropped."""
        dropped, self.dropped, self.overflowed = self.dropped, 0, False
        return dropped


class Hub:
    """Subscribers by job, and the cross-process listener."""

    def __init__(self, capacity_points: int) -> None:
        self._capacity = capacity_points
        self._subscribers: dict[int, set[Subscriber]] = collections.defaultdict(set)
        # job -> until when (time.monotonic()) another backend process's word that it has subscribers holds
        self._watched_elsewhere: dict[int, float] = {}
        self._closed = False
        #: Called when a job gets its first subscriber in this process (the listener announces it at once).
        self.on_newly_watched: Callable[[], None] | None = None
        #: Called with a job that was not watched anywhere and now is (a first subscriber here, or another
        #: process's word about a job not watched until then): its trainer's streams here are ended so that it
        #: reads the cursor, which now says watched (`TelemetryServicer.end_streams_of`).
        self.on_watch_started: Callable[[int], None] | None = None

    def subscribe(self, job_pk: int) -> Subscriber:
        """Registers a subscriber of a job; register before replaying so nothing committed meanwhile is missed."""
        subscriber = Subscriber(self._capacity)
        if self._closed:
            subscriber.close()
        if job_pk not in self._subscribers:
            if self.on_watch_started is not None and not self.watched(job_pk):
                self.on_watch_started(job_pk)
            if self.on_newly_watched is not None:
                self.on_newly_watched()
        self._subscribers[job_pk].add(subscriber)
        metrics.SUBSCRIBERS.inc()
        return subscriber

    def unsubscribe(self, job_pk: int, subscriber: Subscriber) -> None:
        """Removes a subscriber."""
        subscribers = self._subscribers.get(job_pk)
        if subscribers is not None and subscriber in subscribers:
            metrics.SUBSCRIBERS.dec()
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[job_pk]

    def has_subscribers(self, job_pk: int) -> bool:
        """Whether anyone follows the job in this process (publishers skip building events otherwise)."""
        return job_pk in self._subscribers

    def watched(self, job_pk: int) -> bool:
        """Whether anyone follows the job live: a subscriber in this process, or one another backend process
        announced within WATCH_TTL_S."""
        if job_pk in self._subscribers:
            return True
        until = self._watched_elsewhere.get(job_pk)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._watched_elsewhere[job_pk]
        return False

    def watched_here(self) -> list[int]:
        """The jobs with a subscriber in this process."""
        return list(self._subscribers)

    def watched_elsewhere(self, job_pks: Sequence[int]) -> None:
        """Records another backend process's word that it has subscribers of these jobs (held WATCH_TTL_S)."""
        until = time.monotonic() + WATCH_TTL_S
        started = self.on_watch_started
        for job_pk in job_pks:
            if started is not None and not self.watched(job_pk):
                started(job_pk)
            self._watched_elsewhere[job_pk] = until
        if len(self._watched_elsewhere) > 100_000:  # words of processes that died: drop the expired
            now = time.monotonic()
            self._watched_elsewhere = {job: t for job, t in self._watched_elsewhere.items() if t > now}

    def publish(self, job_pk: int, event: Batch | str) -> None:
        """Hands an event to every subscriber of the job. Never blocks."""
        for subscriber in tuple(self._subscribers.get(job_pk, ())):
            subscriber.offer(event)

    def close(self) -> None:
        """Ends every subscription (server shutdown)."""
        self._closed = True
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                subscriber.close()


class PostgresListener:
    """LISTENs for other backend processes' commits and pokes local subscribers of those jobs."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        watch_channel: str,
        instance_id: str,
        hub: Hub,
        announce: Callable[[list[int]], None],
    ) -> None:
        """`channel` carries other processes' commits, `watch_channel` their watched jobs; `announce(job_pks)`
        (blocking, run in a worker thread) tells the other processes which jobs have subscribers here
        (`Store.announce_watched`)."""
        self._dsn = dsn
        self._channel = channel
        self._watch_channel = watch_channel
        self._instance_id = instance_id
        self._hub = hub
        self._announce = announce
        self._announce_now = asyncio.Event()
        hub.on_newly_watched = self._announce_now.set
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.last_error = ""
        """Why the LISTEN connection last failed to open or was lost (the first line, without the DSN's secrets)."""

    def start(self) -> None:
        """Starts listening, and announcing this process's watched jobs, in the background (reconnecting after
        errors)."""
        self._tasks = [
            asyncio.create_task(self._run(), name="postgres-listener"),
            asyncio.create_task(self._announce_watched(), name="watch-announcer"),
        ]

    async def stop(self) -> None:
        """Stops listening and announcing."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _announce_watched(self) -> None:
        while True:
            # Every WATCH_ANNOUNCE_S, and at once when a job gets its first subscriber here.
            with contextlib.suppress(TimeoutError):  # asyncio.timeout: see Dispatcher._dispatch_loop
                async with asyncio.timeout(WATCH_ANNOUNCE_S):
                    await self._announce_now.wait()
            self._announce_now.clear()
            watched = self._hub.watched_here()
            if not watched:
                continue
            try:
                await asyncio.to_thread(self._announce, watched)
            except Exception as error:  # the database is away: the others forget the word after WATCH_TTL_S
                log.debug("could not announce the watched jobs (%s)", type(error).__name__)

    async def _run(self) -> None:
        import psycopg

        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    await conn.execute(f"LISTEN {self._watch_channel}")
                    self.ready.set()
                    delay = 0.5
                    # Events committed while the connection was down are caught by a poke of everyone.
                    for job_pk in list(self._hub._subscribers):
                        self._hub.publish(job_pk, POKE)
                    async for notify in conn.notifies():
                        instance, _, jobs = notify.payload.partition(":")
                        if instance == self._instance_id:
                            continue
                        pks = [int(job) for job in jobs.split(",") if job.isdigit()]
                        if notify.channel == self._watch_channel:
                            self._hub.watched_elsewhere(pks)
                            continue
                        for pk in pks:
                            self._hub.publish(pk, POKE)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.ready.clear()
                self.last_error = describe_error(error, self._dsn)
                log.warning("PostgreSQL LISTEN connection failed (%s); reconnecting in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTEN_RECONNECT_MAX_DELAY_S)
