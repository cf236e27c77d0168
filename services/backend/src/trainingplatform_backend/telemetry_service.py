"""TrainingTelemetryService: what trainer processes call to report metrics, logs, status and results."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import functools
import itertools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform_sdk.errors import (
    InvalidArgumentError,
    PlatformError,
    ResourceExhaustedError,
    UnavailableError,
    quote,
)
from trainingplatform_sdk.server.handlers import MalformedRequest
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.uris import redact_uri
from trainingplatform_sdk.spec.validation import check_job_id, check_number, check_text, check_timestamp

from trainingplatform_backend import metrics
from trainingplatform_backend.auth import CALLER, JobTokenWindow, Principal, authorize_job
from trainingplatform_backend.ingest import (
    INLINE_ROWS,
    BatchResult,
    GroupCommitter,
    IngestBudget,
    Ingestor,
    MetricColumns,
    Prepared,
    check_metric_key,
)
from trainingplatform_backend.models import LOGS_STREAM, METRICS_STREAM
from trainingplatform_backend.settings import DEFAULT_INGEST_BYTES_IN_FLIGHT
from trainingplatform_backend.statemachine import TERMINAL, status_name
from trainingplatform_backend.store import Store, utcnow
from trainingplatform_backend.subscriptions import POKE, Batch, Hub

log = logging.getLogger(__name__)
T = TypeVar("T")
K = TypeVar("K")

_SHUTDOWN_MESSAGE = "the backend is shutting down; resume from GetStreamCursor"
# How old this process's knowledge of a job's current dispatch attempt may be before it is read again.
ATTEMPT_REFRESH_S = 1.0
# How long a group-commit round of small batches of jobs nobody here watches live waits for more: a trainer sending
# a message every few milliseconds then costs the backend one transaction per COMMIT_LINGER_S, not one per message
# (about half of its CPU per message). Nothing is acknowledged before it is committed: a cursor read, a status
# change and the end of a stream end the wait, and a job watched live (`Hub.watched`: a subscriber in this process,
# or one another process announced) is committed at once; history reads see the points up to this much later.
COMMIT_LINGER_S = 0.05
# What ReportRunInfo takes as an MLflow run id: MLflow's own rule (mlflow.utils.validation._RUN_ID_REGEX), so that no
# id an MLflow store makes is refused, while `*`, `..` or `a/b` (which a `tp gc` would have read as a glob or a path
# in the data directory's mlartifacts) are.
_MLFLOW_RUN_ID = re.compile(r"[a-zA-Z0-9][\w\-]*")
# How many received batches a stream may have waiting for their commit before it stops reading (memory bound).
MAX_PENDING_BATCHES = 64
# StreamMetrics and StreamLogs messages larger than this, as received, are parsed only once the process's
# `IngestBudget` lets them in (TP_MAX_INGEST_BYTES_IN_FLIGHT); smaller ones, the SDK's usual batches, never wait.
BUDGETED_MESSAGE_BYTES = 64 * 1024


class Backend:
    """What the servicers share: the store, the ingestor, the hub and the shutdown signal."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        *,
        job_token_grace_s: float = 3600.0,
        commit_linger_s: float = COMMIT_LINGER_S,
        contact_write_s: float = 0.0,
        ingest_bytes_in_flight: int = DEFAULT_INGEST_BYTES_IN_FLIGHT,
    ) -> None:
        """`job_token_grace_s`: how long after its job ended a job token may still write (TP_JOB_TOKEN_GRACE_S);
        `commit_linger_s`: how long a group-commit round of small batches waits for more (`GroupCommitter`);
        `contact_write_s`: how often, at most, a job's reporter contact is written per job (`heard_from`; 0: never);
        `ingest_bytes_in_flight`: the most bytes of large stream messages parsed and not yet committed, all streams
        together (TP_MAX_INGEST_BYTES_IN_FLIGHT; `IngestBudget`)."""
        self.store = store
        self.ingestor = Ingestor(store)
        self.committer = GroupCommitter(self.ingestor, linger_s=commit_linger_s)
        self.ingest_budget = IngestBudget(ingest_bytes_in_flight)
        self.hub = hub
        self.shutting_down = asyncio.Event()
        #: How long a stream may stay quiet once the shutdown began before it is ended (see `messages`).
        self.drain_idle_s = 0.5
        self._reading: set[asyncio.Task[Any]] = set()
        self._interrupted: set[asyncio.Task[Any]] = set()
        # Streams to end without an error at their next read (`end_stream`).
        self._ending: set[asyncio.Task[Any]] = set()
        self._job_pks: dict[str, int] = {}
        # job id -> (current dispatch attempt, when it was read): the fence of superseded attempts' telemetry.
        self._attempts: dict[str, tuple[int, float]] = {}
        # When a job's tokens stop writing (its end plus the grace).
        self.token_window = JobTokenWindow(job_token_grace_s, store.ended_at)
        #: Called when a reporter says its job ended (a terminal status, new or repeated): a trainer reports it once
        #: the run's process exited, so its slot is free (`Dispatcher.slot_freed`).
        self.on_job_ended: Callable[[], None] | None = None
        self._contact_write_s = contact_write_s
        # job -> when its reporter's contact was last written from this process (`heard_from`).
        self._contact_written: dict[int, float] = {}
        self._contact_writes: set[asyncio.Task[None]] = set()

    async def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a blocking database operation in a worker thread."""
        return await asyncio.to_thread(function, *args, **kwargs)

    async def job_pk(self, job_id: str) -> int:
        """The internal key of a job (cached: it never changes).

        Raises:
            InvalidArgumentError: empty job id.
            NotFoundError: no such job.
        """
        check_job_id(job_id)
        pk = self._job_pks.get(job_id)
        if pk is None:
            pk = await self.run(self.store.job_pk, job_id)
            if len(self._job_pks) > 100_000:
                self._job_pks.clear()
            self._job_pks[job_id] = pk
        return pk

    def heard_from(self, job_pk: int) -> None:
        """Notes a telemetry call of the job's reporter, for the reporter lease (`reporter_lease`): written to the
        database in the background, at most every `contact_write_s` per job from this process. Costs a dict lookup
        on every message."""
        if not self._contact_write_s:
            return
        now = time.monotonic()
        if now - self._contact_written.get(job_pk, -math.inf) < self._contact_write_s:
            return
        if len(self._contact_written) > 100_000:
            self._contact_written.clear()
        self._contact_written[job_pk] = now
        task = asyncio.ensure_future(self.run(self.store.note_reporter_contact, job_pk))
        self._contact_writes.add(task)
        task.add_done_callback(self._contact_write_done)

    def _contact_write_done(self, task: asyncio.Task[None]) -> None:
        self._contact_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The database is away: the lease cannot fail anything meanwhile either; the next call writes again.
            log.warning("could not record a reporter's contact (%s)", type(task.exception()).__name__)

    def note_attempt(self, job_id: str, attempt: int) -> None:
        """Told by this process's dispatcher of a job's new dispatch attempt: its fence applies at once."""
        if len(self._attempts) > 100_000:
            self._attempts.clear()
        self._attempts[job_id] = (attempt, time.monotonic())

    async def check_attempt(self, job_id: str, *, write: bool = True) -> None:
        """Refuses the caller when it holds the token of a superseded dispatch attempt of the job (a trainer that
        accepted the job too late, after it went to another one): its telemetry would mix with the current
        attempt's under the same sequence numbers. Checked on every message; the current attempt is re-read at
        most every ATTEMPT_REFRESH_S (another backend replica may have made a new one), at once when this
        process's dispatcher makes one.

        A write (`write`, every RPC but GetStreamCursor) with a job token is also refused once the job ended more
        than TP_JOB_TOKEN_GRACE_S ago (`auth.JobTokenWindow`, from memory on the hot path).

        Raises:
            PlatformError: ABORTED (final: the SDK's sender stops), the attempt was superseded.
            PermissionDeniedError: a job token's write after its job ended and the grace passed.
        """
        caller = CALLER.get()
        if write:
            await self.token_window.check_write(job_id, caller)
        attempt = caller.attempt
        if not attempt:
            return  # the job's own token (CreateJob's), or the internal token
        current, read_at = self._attempts.get(job_id, _UNREAD_ATTEMPT)
        now = time.monotonic()
        if attempt > current or now - read_at > ATTEMPT_REFRESH_S:
            current = await self.run(self.store.current_attempt, job_id)
            self.note_attempt(job_id, current)
        if attempt < current:
            raise _superseded(job_id, attempt, current)

    def check_attempt_now(self, job_id: str, caller: Principal) -> bool:
        """`check_attempt` of a write from memory alone, for every message of a stream: True when `caller` may
        write, False when the database must be read first (then await `check_attempt`).

        Raises:
            PlatformError: ABORTED, as `check_attempt`, when memory already tells.
            PermissionDeniedError: as `check_attempt`, when memory already tells.
        """
        if not self.token_window.check_write_now(job_id, caller):
            return False
        attempt = caller.attempt
        if not attempt:
            return True
        current, read_at = self._attempts.get(job_id, _UNREAD_ATTEMPT)
        if attempt > current or time.monotonic() - read_at > ATTEMPT_REFRESH_S:
            return False
        if attempt < current:
            raise _superseded(job_id, attempt, current)
        return True

    def end_stream(self, task: asyncio.Task[Any]) -> bool:
        """Makes the stream handled by `task` end at its next read without an error, as if the client had
        half-closed it (`messages`); a read already waiting is interrupted. Returns False when it was already
        ending. `stream_ended` forgets it."""
        if task in self._ending:
            return False
        self._ending.add(task)
        self._interrupt_read(task)
        return True

    def stream_ended(self, task: asyncio.Task[Any]) -> None:
        """Forgets a stream's handler that returned (see `end_stream`)."""
        self._ending.discard(task)

    def begin_shutdown(self) -> None:
        """Starts the drain of every open stream: see `messages`."""
        self.shutting_down.set()
        loop = asyncio.get_running_loop()
        for task in list(self._reading):
            # Still waiting then for the message it was waiting for when the shutdown began: the client is quiet.
            loop.call_later(self.drain_idle_s, self._interrupt_read, task)

    def _interrupt_read(self, task: asyncio.Task[Any]) -> None:
        """Interrupts the stream handled by `task` if it is waiting for its next message (see `messages`)."""
        if task in self._reading:
            self._interrupted.add(task)
            task.cancel()

    async def messages(self, requests: AsyncIterator[T]) -> AsyncIterator[T]:
        """The messages of a client stream. Once the server starts shutting down, messages that keep arriving
        are still read and committed until the client goes quiet for `drain_idle_s`; then the call ends with
        UNAVAILABLE and the client resumes from the cursor (on another replica or after the restart).

        Until the shutdown, a read is a plain await (no task or timer per message: this is every message's path);
        a read still waiting `drain_idle_s` after the shutdown began is interrupted by `begin_shutdown`'s timer.
        A stream that `end_stream` ends (its job became watched) ends here too, without an error.
        """
        iterator = aiter(requests)
        task = _handler_task()
        while True:
            if self._ending and task in self._ending:
                return  # `end_stream`: the call ends as if the client half-closed it
            try:
                if self.shutting_down.is_set():
                    message = await asyncio.wait_for(anext(iterator), self.drain_idle_s)
                else:
                    self._reading.add(task)
                    try:
                        message = await anext(iterator)
                    finally:
                        self._reading.discard(task)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise UnavailableError(_SHUTDOWN_MESSAGE) from None
            except asyncio.CancelledError:
                if task not in self._interrupted:
                    raise
                self._interrupted.discard(task)
                if task.uncancel() > 0:  # cancelled by gRPC too (the call ended): stay cancelled
                    raise
                if task in self._ending:
                    return
                raise UnavailableError(_SHUTDOWN_MESSAGE) from None
            yield message


_UNREAD_ATTEMPT: tuple[int, float] = (0, -math.inf)


def _handler_task() -> asyncio.Task[Any]:
    """The task running the current RPC handler."""
    task = asyncio.current_task()
    assert task is not None  # a handler always runs in a task
    return task


def _superseded(job_id: str, attempt: int, current: int) -> PlatformError:
    return PlatformError(
        f"dispatch attempt {attempt} of job {job_id} was superseded by attempt {current} (the job was "
        "handed to another trainer): this run's telemetry is refused; stop it",
        code=grpc.StatusCode.ABORTED,
    )


def _text(text: str, limit: int) -> str:
    """A client's free text as stored: cut to `limit` UTF-8 bytes with a marker, NUL (which no database text
    column holds) replaced."""
    return limits.truncate_utf8(text, limit).replace("\x00", "\ufffd")


def _publish_committed(backend: Backend, job_pk: int, kind: str, items: Any, result: BatchResult) -> None:
    if not backend.hub.has_subscribers(job_pk):
        return
    if isinstance(items, MetricColumns):
        items = items.points()
    clean = (
        result.duplicates == 0
        and result.max_sequence - result.first_sequence + 1 == len(items)
        and all(a.sequence < b.sequence for a, b in itertools.pairwise(items))
    )
    event = Batch(kind, result.first_sequence, result.max_sequence, list(items)) if clean else POKE
    backend.hub.publish(job_pk, event)


def _parser(message_type: Any) -> Callable[[bytes], Any]:
    """What parses a stream's message of `message_type` from its bytes (see `add_telemetry_servicer`).

    Raises (the returned function):
        MalformedRequest: the bytes are not such a message (INVALID_ARGUMENT, as gRPC's parsing of any other
            request).
    """

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as error:
            raise MalformedRequest(f"the request is not a valid protobuf message for this method ({error})") from None

    return parse


_parse_metrics = _parser(telemetry_pb2.StreamMetricsRequest)
_parse_logs = _parser(telemetry_pb2.StreamLogsRequest)


def _metric_items(request: telemetry_pb2.StreamMetricsRequest) -> Any:
    """The points of a StreamMetrics message: its `points`, or its `columns`.

    Raises:
        InvalidArgumentError: the message sets both.
    """
    if not request.HasField("columns"):
        return request.points
    if request.points:
        raise InvalidArgumentError(
            "a StreamMetrics message carries its points in `points` or in `columns`, not both; send two messages"
        )
    return MetricColumns.of(request.columns)


def _log_items(request: telemetry_pb2.StreamLogsRequest) -> Any:
    """The records of a StreamLogs message."""
    return request.records


class _Totals:
    """What one stream's batches committed, counted as they are."""

    __slots__ = ("committed", "duplicates", "last", "missing")

    def __init__(self) -> None:
        self.committed = self.duplicates = self.missing = self.last = 0

    def add(self, result: BatchResult) -> None:
        self.committed += result.committed
        self.duplicates += result.duplicates
        self.missing += result.missing
        self.last = result.last_sequence


class OpenCalls(Generic[K]):
    """How many calls of each key (a caller's subscriptions) are open, up to a limit: `open` counts one in or
    refuses it, `close` counts it out. Keys with no open call are forgotten, so memory follows the open calls
    only."""

    def __init__(self, limit: int, refusal: Callable[[K, int], str]) -> None:
        """`refusal(key, limit)` is the message of the RESOURCE_EXHAUSTED sent past the limit."""
        self.limit = limit
        self._refusal = refusal
        self._open: dict[K, int] = {}

    def open(self, key: K) -> None:
        """Counts one more open call of `key`.

        Raises:
            ResourceExhaustedError: `key` already has `limit` calls open.
        """
        count = self._open.get(key, 0)
        if count >= self.limit:
            raise ResourceExhaustedError(self._refusal(key, self.limit))
        self._open[key] = count + 1

    def close(self, key: K) -> None:
        """Counts one open call of `key` out (it ended, whatever way)."""
        count = self._open.pop(key, 0) - 1
        if count > 0:
            self._open[key] = count

    def count(self, key: K) -> int:
        """How many calls of `key` are open."""
        return self._open.get(key, 0)


def _too_many_streams(job_id: str, limit: int) -> str:
    return (
        f"job {job_id} already has {limit} telemetry stream(s) open (StreamMetrics and StreamLogs together), the "
        "most allowed (TP_MAX_STREAMS_PER_JOB); end one before opening another"
    )


class TelemetryServicer(telemetry_pb2_grpc.TrainingTelemetryServiceServicer):
    """Implements TrainingTelemetryService; see telemetry.proto for the contract."""

    def __init__(
        self,
        backend: Backend,
        max_message_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES,
        *,
        max_streams_per_job: int = 8,
    ) -> None:
        """`max_message_bytes` is the server's request size limit, told to clients by GetStreamCursor;
        `max_streams_per_job` (TP_MAX_STREAMS_PER_JOB) the most telemetry streams open at once per job."""
        self._backend = backend
        self._max_message_bytes = max_message_bytes
        self._max_streams_per_job = max_streams_per_job
        # The open StreamMetrics and StreamLogs calls by job: their handlers' tasks.
        self._streams: dict[int, set[asyncio.Task[Any]]] = {}
        backend.hub.on_watch_started = self.end_streams_of

    def _open_stream(self, job_id: str, job_pk: int) -> None:
        """Counts the current task (a stream's handler) among the job's open streams, until `_close_stream`.

        Raises:
            ResourceExhaustedError: the job already has `max_streams_per_job` streams open.
        """
        tasks = self._streams.setdefault(job_pk, set())
        if len(tasks) >= self._max_streams_per_job:  # never empty here: the limit is at least 1
            raise ResourceExhaustedError(_too_many_streams(job_id, self._max_streams_per_job))
        tasks.add(_handler_task())

    def _close_stream(self, job_pk: int) -> None:
        """Counts the current task out of the job's open streams (it ended, whatever way)."""
        task = _handler_task()
        tasks = self._streams[job_pk]
        tasks.discard(task)
        if not tasks:
            del self._streams[job_pk]
        self._backend.stream_ended(task)

    def end_streams_of(self, job_pk: int) -> None:
        """The job was not watched live and now is (`Hub.on_watch_started`): ends its open streams in this process
        with OK and their totals, as if the client had half-closed them. A trainer told `unwatched` reads the
        cursor rarely; a stream that ends makes it resume from the cursor at once, which then says watched, and it
        sends at the watched rate from there. What a stream received is committed first; what was in flight behind
        it is resent from the cursor (nothing is lost or doubled)."""
        for task in self._streams.get(job_pk, ()):
            if self._backend.end_stream(task):
                metrics.STREAMS_ENDED_FOR_WATCH.inc()

    async def _ingest_stream(
        self,
        requests: AsyncIterator[bytes],
        parse: Callable[[bytes], Any],
        items_of: Callable[[Any], Any],
        kind: str,
        prepare: Callable[[int, Any], Prepared],
        rpc: str,
    ) -> tuple[int, int, int, int]:
        """Reads, checks and commits a stream's messages (`requests`: each one's bytes, which `parse` parses); returns
        what it committed, duplicated and skipped, and the last committed sequence.

        Memory: a message over BUDGETED_MESSAGE_BYTES is parsed only once the process's `IngestBudget` lets it in,
        and holds its share until its commit ended; meanwhile the stream holds the message's bytes alone, and drops
        its references to the parsed message as soon as it is queued, so memory follows the budget, not the
        number of streams sending large messages."""
        backend = self._backend
        budget = backend.ingest_budget
        job_id = ""
        job_pk = 0
        totals = _Totals()
        # The batches received and not yet counted, oldest first (each stream's batches are committed in order).
        pending: collections.deque[asyncio.Future[BatchResult]] = collections.deque()
        large = False
        held = 0  # the budget's bytes the message being read holds, until its commit is queued
        caller = CALLER.get()
        task = _handler_task()
        reading = True  # until the stream stops reading messages (`commit_ended` may end it only until then)

        def commit_ended(outcome: asyncio.Future[BatchResult]) -> None:
            # A failed commit ends the stream now, with its error (raised below), not at the client's next message:
            # a client with nothing more to send (the SDK keeps its stream open between batches) would otherwise
            # wait on a stream that cannot commit until it half-closes it, and its cursor reads would not move.
            if reading and not outcome.cancelled() and outcome.exception() is not None:
                backend.end_stream(task)

        try:
            async for data in backend.messages(requests):
                if len(data) > BUDGETED_MESSAGE_BYTES:
                    await budget.acquire(len(data))
                    held = len(data)
                request = parse(data)
                del data
                if not job_id:
                    if not request.job_id:
                        raise InvalidArgumentError(f"the first {rpc} message must name the job (job_id)")
                    check_job_id(request.job_id)
                    authorize_job(request.job_id)
                    job_pk = await backend.job_pk(request.job_id)
                    # Checked before the stream takes one of the job's slots, whatever its first message carries:
                    # a superseded attempt's token (or a job token past its grace) holding streams open with empty
                    # messages would otherwise keep the current attempt's trainer out (TP_MAX_STREAMS_PER_JOB).
                    await backend.check_attempt(request.job_id)
                    self._open_stream(request.job_id, job_pk)  # closed below, however the stream ends
                    metrics.OPEN_STREAMS.labels(kind).inc()
                    job_id = request.job_id
                else:
                    if request.job_id and request.job_id != job_id:
                        raise InvalidArgumentError(
                            f"one {rpc} call carries one job: got job_id {quote(request.job_id)} after {job_id!r}"
                        )
                    # Every message, empty or not: a stream whose attempt was superseded meanwhile ends at once.
                    if not backend.check_attempt_now(job_id, caller):
                        await backend.check_attempt(job_id)
                backend.heard_from(job_pk)
                items = items_of(request)
                del request
                if not items:
                    if held:
                        budget.release(held)
                        held = 0
                    continue
                # Earlier batches commit while this one is received and parsed; a failed commit ends the stream
                # before anything after it is queued (the committer fails what was queued behind it). A large batch
                # is validated in a worker thread and queued only then: everything before it is committed first,
                # and it is, before anything after it is queued.
                barrier = large or len(items) > INLINE_ROWS
                while pending and (barrier or len(pending) >= MAX_PENDING_BATCHES or pending[0].done()):
                    if not pending[0].done():
                        backend.committer.flush_soon()
                    totals.add(await pending.popleft())
                # Subscribers get the batch the moment it is committed, not when the next message arrives.
                publish = functools.partial(_publish_committed, backend, job_pk, kind, items)
                large = len(items) > INLINE_ROWS
                if not large:
                    # Validating a few points takes microseconds; a hop to a worker thread and back costs more.
                    batch = prepare(job_pk, items)
                    # A job watched live is committed at once; any other lingers (see COMMIT_LINGER_S).
                    linger = not backend.hub.watched(job_pk)
                    committed = backend.committer.enqueue(batch, publish, linger=linger)
                    del batch
                else:
                    committed = asyncio.ensure_future(self._commit(prepare, job_pk, items, publish))
                # The committer holds the batch now: this frame keeps none of it while it awaits the next message,
                # and its share of the budget is given back when its commit ended.
                del items, publish
                committed.add_done_callback(commit_ended)
                pending.append(committed)
                if held:
                    budget.hold(held, committed)
                    held = 0
        finally:
            reading = False
            if held:  # the message was refused
                budget.release(held)
            if job_id:
                self._close_stream(job_pk)
                metrics.OPEN_STREAMS.labels(kind).dec()
            # Everything received is committed, even when the stream ends with an error or a shutdown.
            if pending:
                backend.committer.flush_soon()
                for outcome in await asyncio.gather(*pending, return_exceptions=True):
                    if isinstance(outcome, BaseException):
                        raise outcome
                    totals.add(outcome)
        if not job_id:
            raise InvalidArgumentError(f"the {rpc} stream ended before any message named a job")
        last = totals.last
        if not last:
            last = (await backend.run(backend.store.cursor, job_pk))[0 if kind == METRICS_STREAM else 1]
        return totals.committed, totals.duplicates, totals.missing, last

    async def _commit(
        self,
        prepare: Callable[[int, Any], Prepared],
        job_pk: int,
        items: Any,
        on_commit: Callable[[BatchResult], None],
    ) -> BatchResult:
        """Validates a large batch in a worker thread (the loop keeps serving the other streams meanwhile), then
        commits it in the next group-commit round."""
        batch = await self._backend.run(prepare, job_pk, items)
        return await self._backend.committer.enqueue(batch, on_commit)

    async def StreamMetrics(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.StreamMetricsResponse:
        """`request_iterator`: each StreamMetricsRequest's bytes, unparsed (`add_telemetry_servicer`)."""
        committed, duplicates, missing, last = await self._ingest_stream(
            request_iterator,
            _parse_metrics,
            _metric_items,
            METRICS_STREAM,
            self._backend.ingestor.prepare_metrics,
            "StreamMetrics",
        )
        return telemetry_pb2.StreamMetricsResponse(
            points_committed=committed,
            duplicates_ignored=duplicates,
            last_committed_sequence=last,
            missing_sequences=missing,
        )

    async def StreamLogs(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.StreamLogsResponse:
        """`request_iterator`: each StreamLogsRequest's bytes, unparsed (`add_telemetry_servicer`)."""
        committed, duplicates, missing, last = await self._ingest_stream(
            request_iterator, _parse_logs, _log_items, LOGS_STREAM, self._backend.ingestor.prepare_logs, "StreamLogs"
        )
        return telemetry_pb2.StreamLogsResponse(
            records_committed=committed,
            duplicates_ignored=duplicates,
            last_committed_sequence=last,
            missing_sequences=missing,
        )

    async def UpdateStatus(
        self, request: telemetry_pb2.UpdateStatusRequest, context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.UpdateStatusResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        await self._backend.check_attempt(request.job_id)
        self._backend.heard_from(await self._backend.job_pk(request.job_id))
        target = status_name(request.status)
        await self._backend.committer.flush()  # telemetry received before a status is committed before it
        transition = await self._backend.run(
            self._backend.store.transition,
            request.job_id,
            target,
            reason=_text(request.reason, limits.MAX_ERROR_MESSAGE_BYTES),
            error_message=_text(request.error_message, limits.MAX_ERROR_MESSAGE_BYTES),
            error_detail=_text(request.error_detail, limits.MAX_ERROR_DETAIL_BYTES),
        )
        if transition.changed:
            log.info("job %s is now %s", request.job_id, transition.status)
            self._backend.hub.publish(transition.job_pk, POKE)
        if target in TERMINAL and self._backend.on_job_ended is not None:
            self._backend.on_job_ended()
        return telemetry_pb2.UpdateStatusResponse(status=request.status, changed=transition.changed)

    async def RecordEpochSummary(
        self, request: telemetry_pb2.RecordEpochSummaryRequest, context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.RecordEpochSummaryResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        await self._backend.check_attempt(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        self._backend.heard_from(job_pk)
        if not request.HasField("summary"):
            raise InvalidArgumentError("summary is required: the epoch's number, duration_seconds and metrics")
        summary = request.summary
        if summary.epoch < 0 or summary.epoch > limits.MAX_EPOCH:
            raise InvalidArgumentError(
                f"summary epoch must be between 0 and {limits.MAX_EPOCH} (MAX_EPOCH); got {summary.epoch}"
            )
        check_number(summary.duration_seconds, "summary.duration_seconds", 0.0, limits.MAX_DURATION_SECONDS)
        if len(summary.metrics) > limits.MAX_SUMMARY_METRICS:
            raise InvalidArgumentError(
                f"summary.metrics holds {len(summary.metrics)} metrics; the limit is {limits.MAX_SUMMARY_METRICS}"
            )
        for key in summary.metrics:
            check_metric_key(key, "summary.metrics")
        if summary.HasField("end_time"):
            end_time = check_timestamp(summary.end_time, "summary.end_time").ToDatetime(dt.UTC)
        else:
            end_time = utcnow()
        await self._backend.run(
            self._backend.store.record_epoch_summary,
            job_pk,
            epoch=summary.epoch,
            duration_seconds=summary.duration_seconds,
            end_time=end_time,
            metrics=dict(summary.metrics),
        )
        self._backend.hub.publish(job_pk, POKE)
        return telemetry_pb2.RecordEpochSummaryResponse()

    async def ReportRunInfo(
        self, request: telemetry_pb2.ReportRunInfoRequest, context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.ReportRunInfoResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        await self._backend.check_attempt(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        self._backend.heard_from(job_pk)
        check_text(request.mlflow_run_id, "mlflow_run_id", limits.MAX_NAME_CHARS)
        if request.mlflow_run_id and not _MLFLOW_RUN_ID.fullmatch(request.mlflow_run_id):
            raise InvalidArgumentError(
                f"mlflow_run_id {quote(request.mlflow_run_id)} is not an MLflow run id: a letter or digit, then "
                "letters, digits, `_` or `-` (as MLflow makes them, e.g. 32 hex digits)"
            )
        check_text(request.mlflow_tracking_uri, "mlflow_tracking_uri", limits.MAX_URI_CHARS)
        if len(request.artifacts) > limits.MAX_ARTIFACTS:
            raise InvalidArgumentError(
                f"artifacts holds {len(request.artifacts)} artifacts; the limit is {limits.MAX_ARTIFACTS}"
            )
        artifacts = []
        for artifact in request.artifacts:
            if not artifact.name:
                raise InvalidArgumentError(f"artifact name must be 1 to {limits.MAX_NAME_CHARS} characters")
            check_text(artifact.name, "artifacts.name", limits.MAX_NAME_CHARS)
            if not artifact.uri:
                raise InvalidArgumentError(
                    f"artifact {quote(artifact.name)} needs a URI of at most {limits.MAX_URI_CHARS} characters"
                )
            check_text(artifact.uri, "artifacts.uri", limits.MAX_URI_CHARS)
            # Stored and served (to every reader, the read token's included) without credentials, as the tracking
            # URI: a pre-signed URL's signature or a `user:password@` is removed.
            uri = redact_uri(artifact.uri)
            if not uri:
                raise InvalidArgumentError(
                    f"artifact {quote(artifact.name)} has a URI of credentials alone; send where the file is"
                )
            if artifact.size_bytes < 0:
                raise InvalidArgumentError(f"artifact {quote(artifact.name)} size_bytes must be >= 0")
            artifacts.append((artifact.name, uri, artifact.size_bytes))
        await self._backend.run(
            self._backend.store.report_run_info,
            job_pk,
            mlflow_run_id=request.mlflow_run_id,
            # Stored (and served to every reader, the read token's included) without credentials, whatever sent it.
            mlflow_tracking_uri=redact_uri(request.mlflow_tracking_uri),
            artifacts=artifacts,
        )
        return telemetry_pb2.ReportRunInfoResponse()

    async def GetStreamCursor(
        self, request: telemetry_pb2.GetStreamCursorRequest, context: grpc.aio.ServicerContext
    ) -> telemetry_pb2.GetStreamCursorResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        await self._backend.check_attempt(request.job_id, write=False)
        job_pk = await self._backend.job_pk(request.job_id)
        self._backend.heard_from(job_pk)
        # The cursor covers every message of this job received before this call; other jobs' rounds keep lingering.
        await self._backend.committer.flush(job_pk)
        metric, log_sequence = await self._backend.run(self._backend.store.cursor, job_pk)
        return telemetry_pb2.GetStreamCursorResponse(
            last_metric_sequence=metric,
            last_log_sequence=log_sequence,
            max_message_bytes=self._max_message_bytes,
            unwatched=not self._backend.hub.watched(job_pk),
        )


# The methods whose requests reach their handler unparsed (`add_telemetry_servicer`).
_UNPARSED_REQUESTS = ("StreamMetrics", "StreamLogs")


class _MethodHandlers:
    """Stands in for the server in the generated `add_TrainingTelemetryServiceServicer_to_server`, keeping the
    method handlers it builds (`add_telemetry_servicer` adds them to the server)."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        """The same handlers as `add_registered_method_handlers` gets: `add_telemetry_servicer` adds its own."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Keeps the service's name and its method handlers."""
        self.service = service
        self.handlers = dict(handlers)


def add_telemetry_servicer(servicer: TelemetryServicer, server: grpc.aio.Server) -> None:
    """Serves TrainingTelemetryService with `servicer`, as the generated
    `add_TrainingTelemetryServiceServicer_to_server` does, except that StreamMetrics and StreamLogs get each
    message's bytes unparsed: their handler parses a large message only once the process's `IngestBudget` lets it in
    (parsed, a message takes several times its size), so a stream waiting for the budget holds no more than the
    bytes it received."""
    methods = _MethodHandlers()
    telemetry_pb2_grpc.add_TrainingTelemetryServiceServicer_to_server(servicer, methods)
    handlers = methods.handlers
    for name in _UNPARSED_REQUESTS:
        handler = handlers[name]
        handlers[name] = grpc.stream_unary_rpc_method_handler(
            handler.stream_unary, request_deserializer=None, response_serializer=handler.response_serializer
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(methods.service, handlers),))
    server.add_registered_method_handlers(methods.service, handlers)
