"""One backend subscription per watched job, fanned out to every browser watching it over Server-Sent Events.

A `JobHub` holds the job's single `SubscribeTelemetry` call and the last `history_events` events it received. A
browser stream (`Client`) starts from a cursor (its EventSource's Last-Event-ID, or `after=`):

- when the hub's retained history starts at or before that cursor (every position), the client joins the hub:
  the retained events after its cursor are replayed to it, then it follows live;
- otherwise (a tab that slept through more than the retained history) it catches up on a subscription of its own
  from its cursor, and joins the hub as soon as its position reaches the start of the hub's history.

Every SSE event carries `id: <cursor>` (`Cursor.text`): the position after that event, so a reconnecting browser
resumes with nothing missed and nothing twice (events a client's cursor already covers are filtered out per
client: points and records by sequence, status changes by their sequence, epoch summaries by position).

A browser that falls `client_queue_events` events behind is disconnected; its EventSource reconnects with the id
of the last event it received and resumes from there, so a slow tab never holds back the others or the hub. (The
retained events replayed to a client that joins are queued at once, as one event of that bound: a tab is never
dropped for the history it asked for, however much longer than its queue.) The
hub's subscription ends when the job ends (its clients get `event: end`), or `linger_s` after its last client left.

The backend allows TP_MAX_SUBSCRIPTIONS_PER_CALLER open subscriptions per token, and every hub holds one of the read
token's (and so does a catch-up while it runs, an ended job's stream included). A hub or catch-up the backend
refuses (RESOURCE_EXHAUSTED) tells its clients at once (`event: live_unavailable`, with the reason and when it tries
again), retries with backoff (1 s doubling to 30 s) from where its clients are, and sends `event: live_resumed` once
a subscription holds: a browser never waits on silent pings, and a stream never fails for a refusal. Likewise while
the backend is unreachable (the subscription fails with UNAVAILABLE; it resubscribes, backing off to 5 s):
`event: live_unavailable` (code UNAVAILABLE) once, then `event: live_resumed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk.spec import limits

from trainingplatform_dashboard import convert, metrics
from trainingplatform_dashboard.backend import Backend
from trainingplatform_dashboard.errors import ApiError, from_rpc_error

__all__ = ["Client", "Counters", "Cursor", "Event", "FanOut", "JobHub", "Resubscribing"]

_LOG = logging.getLogger("trainingplatform_dashboard.fanout")

_CURSOR = re.compile(r"^(?:m(\d{1,16}))?(?:l(\d{1,16}))?(?:s(\d{1,16}))?(?:e(\d{1,16}))?$")
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.CANCELLED,
}
_BUSY_FIRST_RETRY_S = 1.0
_BUSY_MAX_RETRY_S = 30.0
_RESUMED_AFTER_S = 1.0
"""A resubscription that no refusal ended within this long holds (the backend refuses at the start of the call)."""
_SUMMARY_QUIET_S = 1.0
"""A read of a live job's epoch summaries has them all once it gave none for this long."""


_UNREACHABLE_NOTICE = convert.dumps(
    {
        "error": {
            "code": "UNAVAILABLE",
            "message": "the backend is unreachable; live updates paused, retrying",
            "field": None,
        }
    }
)
"""The `live_unavailable` data while subscriptions fail with UNAVAILABLE."""


def _refused_notice(error: grpc.aio.AioRpcError, retry_in_s: float) -> str:
    """The `live_unavailable` data of a subscription the backend refused (RESOURCE_EXHAUSTED)."""
    message = (
        f"live updates are unavailable: the backend refused the dashboard's subscription ({error.details() or ''}). "
        "Every job followed live holds one of the dashboard's read-token subscriptions "
        "(TP_MAX_SUBSCRIPTIONS_PER_CALLER on the backend)"
    )
    return convert.dumps(
        {"error": {"code": "RESOURCE_EXHAUSTED", "message": message, "field": None}, "retry_in_s": retry_in_s}
    )


@dataclass(frozen=True)
class Cursor:
    """A position in a job's telemetry: the last metric, log, status and epoch-summary sequence seen.

    Its text form (the SSE event id) is `m<metric>l<log>s<status>e<epoch_summary>`; a part left out is 0, so
    `m1200` means "metrics after sequence 1200, everything else from the start".
    """

    m: int = 0
    l: int = 0  # noqa: E741 - the letter of the text form
    s: int = 0
    e: int = 0

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """Parses the text form.

        Raises:
            ValueError: not a cursor.
        """
        match = _CURSOR.match(text.strip())
        if match is None:
            raise ValueError(f"not a dashboard event id: {text[:40]!r}")
        cursor = cls(*(int(part) if part else 0 for part in match.groups()))
        # The backend's SubscribeTelemetry bounds: a part past them would fail inside the stream, after a 200.
        for letter, value, high in (
            ("m", cursor.m, limits.MAX_SEQUENCE),
            ("l", cursor.l, limits.MAX_SEQUENCE),
            ("s", cursor.s, limits.MAX_STATUS_SEQUENCE),
            ("e", cursor.e, limits.MAX_EPOCH + 1),
        ):
            if value > high:
                raise ValueError(f"event id {text[:40]!r}: {letter} must be at most {high}, got {value}")
        return cursor

    @classmethod
    def from_proto(cls, cursor: jobs_pb2.TelemetryCursor) -> Cursor:
        """The cursor of a SubscribeTelemetry response."""
        return cls(cursor.metric_sequence, cursor.log_sequence, cursor.status_sequence, cursor.epoch_summary_sequence)

    def proto(self) -> jobs_pb2.TelemetryCursor:
        """The backend's form."""
        return jobs_pb2.TelemetryCursor(
            metric_sequence=self.m, log_sequence=self.l, status_sequence=self.s, epoch_summary_sequence=self.e
        )

    def text(self) -> str:
        """The SSE event id."""
        return f"m{self.m}l{self.l}s{self.s}e{self.e}"

    def covers(self, other: Cursor) -> bool:
        """Whether every position is at or after `other`'s."""
        return self.m >= other.m and self.l >= other.l and self.s >= other.s and self.e >= other.e

    def max(self, other: Cursor) -> Cursor:
        """The later of each position."""
        if self.covers(other):
            return self
        return Cursor(max(self.m, other.m), max(self.l, other.l), max(self.s, other.s), max(self.e, other.e))


@dataclass
class Event:
    """One backend event, converted once for every client.

    Attributes:
        kind: The SSE event name: metrics, logs, status or epoch_summary.
        after: The backend's cursor after the event.
        data: The JSON of the whole event.
        low: The lowest sequence it holds (points, records, a status change) or its epoch-summary position.
        items: The points or records (for filtering), else empty.
        status: The status a `status` event moves to.
    """

    kind: str
    after: Cursor
    data: str
    low: int
    items: list[dict[str, Any]] = field(default_factory=list)
    status: str = ""


def build_event(response: jobs_pb2.SubscribeTelemetryResponse) -> Event | None:
    """The event of a response (None for a `lagged` notice, which only moves the cursor)."""
    after = Cursor.from_proto(response.cursor)
    which = response.WhichOneof("event")
    if which == "metrics":
        points = [convert.point_json(point) for point in response.metrics.points]
        if not points:
            return None
        low = min(p["sequence"] for p in points)
        return Event("metrics", after, convert.dumps({"points": points}), low, points)
    if which == "logs":
        records = [convert.log_json(record) for record in response.logs.records]
        if not records:
            return None
        low = min(r["sequence"] for r in records)
        return Event("logs", after, convert.dumps({"records": records}), low, records)
    if which == "status_event":
        data = convert.status_event_json(response.status_event)
        return Event("status", after, convert.dumps(data), response.status_event.sequence, status=data["status"])
    if which == "epoch_summary":
        return Event("epoch_summary", after, convert.dumps(convert.epoch_summary_json(response.epoch_summary)), after.e)
    return None


class Resubscribing:
    """A job's SubscribeTelemetry call that resubscribes from its cursor: what a hub and a catch-up both follow.

    `responses()` yields every response of the job's subscription from `cursor()` (read at each (re)subscription:
    the position its reader reached), and returns when the backend ends the stream (the job ended). A retryable error
    resubscribes: a refusal (RESOURCE_EXHAUSTED) is told at once (`notify("live_unavailable", ...)`, with the reason
    and when it tries again), retried with backoff (1 s doubling to 30 s); the backend unreachable (UNAVAILABLE) is
    told once, retried backing off to 5 s, as is any other retryable error (quietly); `live_resumed` is told once a
    subscription holds again. Another error is raised (`grpc.aio.AioRpcError`), as is `ApiError` (no backend token).
    """

    def __init__(
        self,
        backend: Backend,
        job_id: str,
        *,
        what: str,
        cursor: Callable[[], Cursor],
        notify: Callable[[str, str], None],
        counted: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.job_id = job_id
        self.what = what
        """What the log calls it: "live updates of job <id>" or "catch-up of job <id>"."""
        self.cursor = cursor
        self.notify = notify
        self.counted = counted
        self.unavailable: str | None = None
        """The `live_unavailable` event's data while the backend refuses the subscription or is unreachable, else
        None."""
        self.unreachable = False
        """Whether `unavailable` says that the backend is unreachable (said once, however many retries fail)."""

    def _refused(self, error: grpc.aio.AioRpcError, retry_in_s: float) -> None:
        """The backend refused the subscription (RESOURCE_EXHAUSTED): the readers are told, and so is the log."""
        if self.unavailable is None:
            _LOG.warning(
                "%s unavailable: the backend refused its subscription (%s); retrying in %g s (raise the backend's "
                "TP_MAX_SUBSCRIPTIONS_PER_CALLER, or lower TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION)",
                self.what,
                error.details() or "",
                retry_in_s,
            )
        self.unreachable = False
        self.unavailable = _refused_notice(error, retry_in_s)
        self.notify("live_unavailable", self.unavailable)

    def _unreachable(self, error: grpc.aio.AioRpcError) -> None:
        """The subscription failed with UNAVAILABLE: the readers are told once while it keeps resubscribing."""
        if self.unreachable:
            return  # already said: the retries do not repeat it
        self.unreachable = True
        _LOG.warning("%s paused: the backend is unreachable (%s)", self.what, error.details())
        self.unavailable = _UNREACHABLE_NOTICE
        self.notify("live_unavailable", self.unavailable)

    def _resumed(self) -> None:
        """A subscription holds again after refusals or failures: the readers are told (`live_resumed`)."""
        if self.unavailable is None:
            return
        self.unavailable = None
        self.unreachable = False
        _LOG.info("%s resumed", self.what)
        self.notify("live_resumed", "{}")

    async def responses(self) -> AsyncGenerator[jobs_pb2.SubscribeTelemetryResponse, None]:
        """The responses from `cursor()` on, across resubscriptions, until the job's stream ends (use it in
        `contextlib.aclosing`, so that a reader that stops early ends the call at once)."""
        loop = asyncio.get_running_loop()
        delay = 0.2
        busy_delay = _BUSY_FIRST_RETRY_S
        while True:
            self.counted()
            call: Any = self.backend.subscribe(self.job_id, self.cursor().proto())
            holds = loop.call_later(_RESUMED_AFTER_S, self._resumed) if self.unavailable is not None else None
            try:
                async for response in call:
                    delay = 0.2
                    busy_delay = _BUSY_FIRST_RETRY_S
                    self._resumed()
                    yield response
                self._resumed()
                return  # the job ended: the backend ends the stream after its terminal status
            except grpc.aio.AioRpcError as error:
                if error.code() not in _RETRYABLE:
                    raise
                if holds is not None:
                    holds.cancel()
                if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    self._refused(error, busy_delay)
                    await asyncio.sleep(busy_delay)
                    busy_delay = min(busy_delay * 2, _BUSY_MAX_RETRY_S)
                    continue
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    self._unreachable(error)
                _LOG.info(
                    "%s: the subscription broke (%s: %s); resubscribing", self.what, error.code().name, error.details()
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if holds is not None:
                    holds.cancel()
                call.cancel()


@dataclass
class Counters:
    """What /healthz reports about the fan-out (no secrets)."""

    hub_subscriptions_total: int = 0
    """Backend subscriptions opened by hubs (resubscriptions after a backend error included)."""
    catchup_subscriptions_total: int = 0
    """Backend subscriptions of single clients catching up, or reading a job that has ended."""
    clients_total: int = 0
    slow_clients_dropped_total: int = 0
    events_received_total: int = 0


class Client:
    """One browser's event stream: a bounded queue of SSE chunks, filtered by its cursor."""

    def __init__(self, cursor: Cursor, max_events: int) -> None:
        self.cursor = cursor
        self.max_events = max_events
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.overflowed = False
        self.closed = False
        self.stopped = False
        """Set when the server begins to stop: the stream ends now (the browser resumes, from the next server)."""
        self.hub: JobHub | None = None
        """The hub the client joined (None while it catches up on its own subscription)."""
        self.drained = asyncio.Event()
        self.interrupt: Callable[[], object] | None = None
        """Set by the stream while a send is in flight: cancels it (a client that overflows is dropped at once,
        even while its socket accepts nothing)."""

    def take(self) -> bytes:
        """Everything queued, as one chunk (empty when nothing is)."""
        chunk = b"".join(self.queue)
        self.queue.clear()
        self.drained.set()
        return chunk

    async def room(self) -> None:
        """Waits until the queue is at most half full (a catch-up, which reads for this client alone, waits
        for the browser instead of overflowing)."""
        while len(self.queue) > self.max_events // 2 and not self.closed:
            self.drained.clear()
            await self.drained.wait()

    def offer(self, event: Event) -> None:
        """Queues the part of `event` after the client's cursor (never blocks; past the bound the client is
        marked overflowed and receives nothing more: its stream ends and the browser resumes from its id)."""
        chunk = self._chunk(event)
        if chunk is not None and self.push(chunk):
            metrics.count_events_sent(event.kind)

    def replay(self, events: Iterable[Event]) -> None:
        """Queues the part of `events` after the client's cursor as one chunk, one event of its bound: the retained
        history a joining client asked for never drops it as slow, however much longer than its queue it is."""
        sent = [(event.kind, chunk) for event in events if (chunk := self._chunk(event)) is not None]
        if sent and self.push(b"".join(chunk for _, chunk in sent)):
            for kind, _ in sent:
                metrics.count_events_sent(kind)

    def _chunk(self, event: Event) -> bytes | None:
        """The SSE chunk of the part of `event` after the client's cursor (None when it has none, or the stream
        ended), moving the cursor past the event."""
        if self.closed or self.overflowed:
            return None
        cursor = self.cursor
        data: str | None = event.data
        if event.kind == "metrics":
            if event.low <= cursor.m:
                kept = [p for p in event.items if p["sequence"] > cursor.m]
                data = convert.dumps({"points": kept}) if kept else None
        elif event.kind == "logs":
            if event.low <= cursor.l:
                kept = [r for r in event.items if r["sequence"] > cursor.l]
                data = convert.dumps({"records": kept}) if kept else None
        elif event.kind == "status":
            if event.low and event.low <= cursor.s:
                data = None
        elif event.kind == "epoch_summary" and event.after.e <= cursor.e:
            data = None
        self.cursor = cursor.max(event.after)
        if data is None:
            return None
        return f"id: {self.cursor.text()}\nevent: {event.kind}\ndata: {data}\n\n".encode()

    def push(self, chunk: bytes) -> bool:
        """Queues one SSE chunk; False when it was not queued: the stream is closed or overflowed, or the queue
        holds `max_events` already (then the client is marked overflowed, and a send in flight is interrupted: the
        stream ends at once, even while its socket accepts nothing, and the browser resumes)."""
        if self.closed or self.overflowed:
            return False
        if len(self.queue) >= self.max_events:
            self.overflowed = True
            self.wake.set()
            if self.interrupt is not None:
                self.interrupt()
            return False
        self.queue.append(chunk)
        self.wake.set()
        return True

    def notice(self, kind: str, data: str) -> None:
        """Queues `event: <kind>` without an id (it moves no cursor): the state of the job's live updates."""
        if self.closed or self.overflowed:
            return
        self.queue.append(f"event: {kind}\ndata: {data}\n\n".encode())
        self.wake.set()

    def finish(self, status: str | None) -> None:
        """Queues `event: end` and closes the stream after it."""
        if self.closed:
            return
        self.queue.append(f"event: end\ndata: {convert.dumps({'status': status})}\n\n".encode())
        self.closed = True
        self.wake.set()

    def fail(self, code: str, message: str) -> None:
        """Queues `event: error` ({"error": {code, message}}) and closes the stream after it."""
        if self.closed:
            return
        payload = convert.dumps({"error": {"code": code, "message": message, "field": None}})
        self.queue.append(f"event: error\ndata: {payload}\n\n".encode())
        self.closed = True
        self.wake.set()


class JobHub:
    """The one backend subscription of a job and the clients it feeds."""

    def __init__(self, fanout: FanOut, job_id: str, start: Cursor) -> None:
        self.fanout = fanout
        self.job_id = job_id
        self.base = start
        """Where the retained history starts: a client whose cursor covers it can join."""
        self.position = start
        self.history: deque[Event] = deque()
        self.clients: set[Client] = set()
        self.finished = False
        self.status = ""
        self.subscription = Resubscribing(
            fanout.backend,
            job_id,
            what=f"live updates of job {job_id}",
            cursor=lambda: self.position,
            notify=self._notify,
            counted=self._counted,
        )
        self._linger: asyncio.TimerHandle | None = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"hub-{job_id}")

    def can_join(self, client: Client) -> bool:
        """Whether the client's cursor lies within the retained history (or after it)."""
        return not self.finished and client.cursor.covers(self.base)

    def join(self, client: Client) -> None:
        """Adds a client whose cursor `can_join`: replays the retained events after it (at once, as one event of
        its queue's bound), then it follows live."""
        client.replay(self.history)
        if self.subscription.unavailable is not None:
            client.notice("live_unavailable", self.subscription.unavailable)
        self.clients.add(client)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def leave(self, client: Client) -> None:
        """Removes a client; the subscription ends `linger_s` after the last one left."""
        self.clients.discard(client)
        if not self.clients and not self.finished and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self.fanout.linger_s, self.close)

    def close(self) -> None:
        """Ends the subscription now (its clients' streams end; browsers reconnect and resume)."""
        self._linger = None
        if self.clients:
            return
        self.finished = True
        self.fanout.forget(self)
        self._task.cancel()

    def _record(self, event: Event) -> None:
        self.history.append(event)
        while len(self.history) > self.fanout.history_events:
            self.base = self.history.popleft().after

    def _notify(self, kind: str, data: str) -> None:
        """Tells every client the state of the job's live updates (`live_unavailable`, `live_resumed`)."""
        for client in tuple(self.clients):
            client.notice(kind, data)

    def _counted(self) -> None:
        self.fanout.counters.hub_subscriptions_total += 1

    async def _run(self) -> None:
        try:
            async with contextlib.aclosing(self.subscription.responses()) as responses:
                async for response in responses:
                    self.fanout.counters.events_received_total += 1
                    event = build_event(response)
                    self.position = self.position.max(Cursor.from_proto(response.cursor))
                    if event is None:
                        continue
                    if event.kind == "status":
                        self.status = event.status
                    self._record(event)
                    for client in tuple(self.clients):
                        client.offer(event)
            self._end()
        except grpc.aio.AioRpcError as error:  # not retryable
            self._fail(error)
        except asyncio.CancelledError:
            pass
        except Exception:  # never leave clients hanging on a hub that died
            _LOG.exception("subscription of job %s failed", self.job_id)
            self._fail_all("BACKEND_ERROR", "the dashboard's subscription failed; reload to retry")

    def _end(self) -> None:
        self.finished = True
        self.fanout.forget(self)
        for client in tuple(self.clients):
            client.finish(self.status or None)

    def _fail(self, error: grpc.aio.AioRpcError) -> None:
        api = from_rpc_error(error)
        self._fail_all(api.code, api.message)

    def _fail_all(self, code: str, message: str) -> None:
        self.finished = True
        self.fanout.forget(self)
        for client in tuple(self.clients):
            client.fail(code, message)


class FanOut:
    """The hubs of every watched job, and the catch-up of clients that start behind them."""

    def __init__(self, backend: Backend, *, linger_s: float, history_events: int, client_queue_events: int) -> None:
        self.backend = backend
        self.linger_s = linger_s
        self.history_events = history_events
        self.client_queue_events = client_queue_events
        self.hubs: dict[str, JobHub] = {}
        self.clients: set[Client] = set()
        self.counters = Counters()

    def forget(self, hub: JobHub) -> None:
        """Drops a hub that ended (a new one is made for the next client)."""
        if self.hubs.get(hub.job_id) is hub:
            del self.hubs[hub.job_id]

    def _hub_for(self, job_id: str, client: Client) -> JobHub | None:
        """The hub the client can join now: the job's own, or a new one starting at the client's cursor."""
        hub = self.hubs.get(job_id)
        if hub is None or hub.finished:
            hub = JobHub(self, job_id, client.cursor)
            self.hubs[job_id] = hub
            return hub
        return hub if hub.can_join(client) else None

    def attach(self, job_id: str, client: Client, *, live: bool) -> asyncio.Task[None] | None:
        """Starts feeding `client`: it joins the job's hub at once when it can (returns None), else a task catches
        it up on a subscription of its own and then joins the hub (cancel the task when the browser leaves).
        `live`: the job has not ended (an ended job's stream is a finite replay of its own, ending with
        `event: end`)."""
        self.counters.clients_total += 1
        self.clients.add(client)
        if live:
            hub = self._hub_for(job_id, client)
            if hub is not None:
                hub.join(client)
                client.hub = hub
                return None
        return asyncio.get_running_loop().create_task(self._catch_up(job_id, client, live=live))

    async def summary_cap(self, job_id: str, claimed: int) -> int:
        """The epoch-summary position (epoch + 1) a client may resume from: `claimed` when the job has a summary
        there or later (the job's subscription saw one, or a read of its summaries finds one), else the position of
        its last summary (an id past them, forged or from another deployment, must not start the job's shared
        subscription past summaries still to come)."""
        hub = self.hubs.get(job_id)
        if claimed == 0 or (hub is not None and not hub.finished and hub.position.e >= claimed):
            return claimed
        if await self._last_summary(job_id, claimed - 1, claimed) >= claimed:
            return claimed
        return min(claimed, await self._last_summary(job_id, 0, claimed))

    async def _last_summary(self, job_id: str, after: int, enough: int) -> int:
        """The position of the last epoch summary past `after` (`after` when none is), read on a short subscription
        that skips every other event, until it reaches `enough`, ends (an ended job) or gives nothing for
        `_SUMMARY_QUIET_S` (a live job; a backend error ends it too: the cap is then lower, and a summary is sent
        again rather than skipped)."""
        start = jobs_pb2.TelemetryCursor(
            metric_sequence=limits.MAX_SEQUENCE,
            log_sequence=limits.MAX_SEQUENCE,
            status_sequence=limits.MAX_STATUS_SEQUENCE,
            epoch_summary_sequence=after,
        )
        call: Any = self.backend.subscribe(job_id, start)
        position = after
        try:
            responses = call.__aiter__()
            while position < enough:
                response = await asyncio.wait_for(responses.__anext__(), timeout=_SUMMARY_QUIET_S)
                position = max(position, response.cursor.epoch_summary_sequence)
        except (StopAsyncIteration, TimeoutError, grpc.aio.AioRpcError):
            pass
        finally:
            call.cancel()
        return position

    def detach(self, client: Client) -> None:
        """The client's stream ended (browser gone, overflow, end of job)."""
        self.clients.discard(client)
        if client.overflowed:
            self.counters.slow_clients_dropped_total += 1
        if client.hub is not None:
            client.hub.leave(client)
            client.hub = None

    async def _catch_up(self, job_id: str, client: Client, *, live: bool) -> None:
        """Feeds `client` from a subscription of its own from its cursor: to the end of an ended job, or until it
        can join the job's hub. The backend refusing it (RESOURCE_EXHAUSTED) or unreachable (UNAVAILABLE) does not
        end the stream: as a hub, it says so (`event: live_unavailable`), resubscribes from the client's cursor with
        backoff and says `event: live_resumed` once a subscription holds (`Resubscribing`); another retryable error
        resubscribes quietly, the others end the stream with `event: error`."""

        def counted() -> None:
            self.counters.catchup_subscriptions_total += 1

        subscription = Resubscribing(
            self.backend,
            job_id,
            what=f"catch-up of job {job_id}",
            cursor=lambda: client.cursor,
            notify=client.notice,
            counted=counted,
        )
        status = ""
        try:
            async with contextlib.aclosing(subscription.responses()) as responses:
                async for response in responses:
                    event = build_event(response)
                    if event is not None:
                        if event.kind == "status":
                            status = event.status
                        client.offer(event)
                    else:
                        client.cursor = client.cursor.max(Cursor.from_proto(response.cursor))
                    if client.closed or client.overflowed:
                        return
                    if live and status not in _TERMINAL:
                        hub = self._hub_for(job_id, client)
                        if hub is not None:
                            hub.join(client)
                            client.hub = hub
                            return
                    await client.room()
        except ApiError as error:  # no backend token
            client.fail(error.code, error.message)
            return
        except grpc.aio.AioRpcError as error:  # not retryable
            api = from_rpc_error(error)
            client.fail(api.code, api.message)
            return
        client.finish(status or None)

    async def close(self) -> None:
        """Ends every subscription (shutdown)."""
        for hub in list(self.hubs.values()):
            hub.finished = True
            hub._task.cancel()
            with contextlib.suppress(BaseException):
                await hub._task
        self.hubs.clear()

    @property
    def open_subscriptions(self) -> int:
        """Hubs with an open backend subscription."""
        return len(self.hubs)
