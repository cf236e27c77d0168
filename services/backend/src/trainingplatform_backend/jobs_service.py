"""JobsService: creating jobs, reading their history and following their telemetry live."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf import json_format
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError, quote
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.validation import check_int, check_job_id, check_text, validate_spec

from trainingplatform_backend import convert, statemachine
from trainingplatform_backend.auth import CALLER, Kind, authorize_job
from trainingplatform_backend.dispatch import Dispatcher
from trainingplatform_backend.ingest import check_metric_key
from trainingplatform_backend.models import METRICS_STREAM
from trainingplatform_backend.store import JobView
from trainingplatform_backend.subscriptions import POKE, Batch, StreamPosition, Subscriber
from trainingplatform_backend.telemetry_service import Backend, OpenCalls

log = logging.getLogger(__name__)

_REPLAY_PAGE = 5000
# GetMetricSeries: buckets per key when the caller asks for none, and the most it may ask for.
DEFAULT_SERIES_POINTS = 1000
MAX_SERIES_POINTS = 10_000
MAX_SERIES_KEYS = 1000
"""Most keys one GetMetricSeries answer covers (the first in key order; `next_key` names the key to continue from):
bounds the work, the memory and the size of an answer however many keys a job has (as the proto documents)."""
# What a list or replay response needs beside its items (next_page_token, cursor, framing), at most.
_RESPONSE_RESERVE_BYTES = 4096
# Rows fetched first for a byte-bounded page (then 4 times more each time): jobs (a spec stored before the spec
# size limit may be megabytes) and log records (up to 16 KiB) are read a little at a time; metric points are small.
_FIRST_JOBS = 16
_FIRST_LOGS = 256


def request_hashes(request: jobs_pb2.CreateJobRequest, dispatch: bool) -> tuple[str, str]:
    """What a retry of a keyed CreateJob must repeat, hashed: the request without its key, `dispatch` made explicit.

    Returns the hash stored with the job, of the request as the job stores it: each section of the spec goes
    through its stored JSON form and back (`convert.message_to_dict`, read back as `convert.job_to_proto` does),
    so two requests that store the same job hash the same, an empty sub-message present (`advanced {}`) or not.
    Then the hash of the request's own bytes, which versions before this one stored: a key stored by them still
    matches its exact retry (and for a request without an empty sub-message both hashes are the same).
    """
    stored = jobs_pb2.CreateJobRequest(
        spec=common_pb2.JobSpec(framework=request.spec.framework), display_name=request.display_name, dispatch=dispatch
    )
    for section in ("model", "dataset", "training", "advanced"):
        json_format.ParseDict(convert.message_to_dict(getattr(request.spec, section)), getattr(stored.spec, section))
    unkeyed = jobs_pb2.CreateJobRequest()
    unkeyed.CopyFrom(request)
    unkeyed.request_id = ""
    unkeyed.dispatch = dispatch
    return (
        hashlib.sha256(stored.SerializeToString(deterministic=True)).hexdigest(),
        hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest(),
    )


class JobsServicer(jobs_pb2_grpc.JobsServiceServicer):
    """Implements JobsService; see jobs.proto for the contract."""

    def __init__(
        self,
        backend: Backend,
        dispatcher: Dispatcher,
        *,
        max_epochs: int = limits.DEFAULT_MAX_EPOCHS,
        max_spec_bytes: int = limits.DEFAULT_MAX_SPEC_BYTES,
        max_waiting_jobs: int = 0,
        max_subscriptions_per_caller: int = 64,
        max_message_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES,
        page_tokens: convert.PageTokens | None = None,
    ) -> None:
        """`max_epochs`, `max_spec_bytes` and `max_waiting_jobs` are the server's TP_MAX_EPOCHS, TP_MAX_SPEC_BYTES
        and TP_MAX_WAITING_JOBS (0: no limit)."""
        self._backend = backend
        self._dispatcher = dispatcher
        # Open SubscribeTelemetry calls per caller (TP_MAX_SUBSCRIPTIONS_PER_CALLER): per token kind, and per job
        # for job tokens.
        self._subscriptions: OpenCalls[tuple[str, str]] = OpenCalls(
            max_subscriptions_per_caller, _too_many_subscriptions
        )
        self._max_epochs = max_epochs
        self._max_spec_bytes = max_spec_bytes
        self._max_waiting_jobs = max_waiting_jobs
        # Every list (and replay) response stays within half the largest message (TP_MAX_MESSAGE_BYTES; 4 MiB by
        # default, which is also gRPC's default receive limit of clients), whatever is stored: pages end early by
        # bytes, and a job too large alone is listed trimmed (`convert.job_within`).
        self._page_bytes = max_message_bytes // 2 - _RESPONSE_RESERVE_BYTES
        self._page_tokens = page_tokens or convert.PageTokens()

    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CreateJobResponse:
        validate_spec(request.spec, max_epochs=self._max_epochs, max_spec_bytes=self._max_spec_bytes)
        check_text(request.display_name, "display_name", limits.MAX_NAME_CHARS)
        check_text(request.request_id, "request_id", limits.MAX_REQUEST_ID_CHARS)
        dispatch = request.dispatch if request.HasField("dispatch") else True
        request_hash = legacy_hash = ""
        if request.request_id:
            request_hash, legacy_hash = request_hashes(request, dispatch)
            # A stored key is answered before the trainer checks: a retry gets its job (or ALREADY_EXISTS for
            # another request) at once, whatever the trainers' state now (none configured, slow or hung).
            existing = await self._backend.run(
                self._backend.store.job_of_request, request.request_id, request_hash, legacy_hash
            )
            if existing is not None:
                return self._retried(request.request_id, existing)
        if dispatch and not self._dispatcher.has_trainer(request.spec.framework):
            raise FailedPreconditionError(
                f"no trainer service is configured for framework {quote(request.spec.framework)}: start one (a local "
                "stack: `tp up`; a backend of your own: set its TP_TRAINERS), or run the training yourself in a job "
                "created with dispatch=false (`tp run -- python train.py` creates one and runs the script)"
            )
        spec = request.spec
        job_id = str(uuid.uuid4())
        if dispatch:
            # A trainer of the framework checks what the backend cannot (models, dataset paths, framework options,
            # its host's bounds), so a job that would fail at dispatch is refused now; an unreachable trainer is not.
            await self._dispatcher.validate(spec, job_id)
        token, token_hash = self._dispatcher.job_token(job_id)
        # The store looks the key up again and, when a concurrent call with the same key inserts first, returns
        # that call's job (the request_id column is unique).
        view, created = await self._backend.run(
            self._backend.store.create_job,
            job_id=job_id,
            token_hash=token_hash,
            queued=dispatch,
            request_id=request.request_id,
            request_hash=request_hash,
            legacy_request_hash=legacy_hash,
            framework=spec.framework,
            model_name=spec.model.name,
            display_name=request.display_name,
            model_config=convert.message_to_dict(spec.model),
            dataset_config=convert.message_to_dict(spec.dataset),
            training_config=convert.message_to_dict(spec.training),
            advanced_config=convert.message_to_dict(spec.advanced),
            max_waiting=self._max_waiting_jobs,
        )
        if not created:
            return self._retried(request.request_id, view)
        log.info("created job %s (%s %s)", view.job.job_id, spec.framework, spec.model.name)
        if dispatch:
            self._dispatcher.wake()  # the dispatcher hands it to a trainer, outside this call
        return jobs_pb2.CreateJobResponse(job=convert.job_to_proto(view), telemetry_token=token)

    def _retried(self, request_id: str, view: JobView) -> jobs_pb2.CreateJobResponse:
        """A retry's answer: the job its key created, with the same token (derived again; only its hash is stored)."""
        token, token_hash = self._dispatcher.job_token(view.job.job_id)
        if token_hash != view.job.telemetry_token_hash:
            raise FailedPreconditionError(
                f"request_id {quote(request_id)} created job {view.job.job_id}, whose telemetry token can no longer "
                "be returned (the internal service token changed)"
            )
        log.info("CreateJob retried with request_id %s: job %s", quote(request_id), view.job.job_id)
        return jobs_pb2.CreateJobResponse(job=convert.job_to_proto(view), telemetry_token=token)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        view = await self._backend.run(self._backend.store.get_job, request.job_id, with_events=True)
        return jobs_pb2.GetJobResponse(
            job=convert.job_to_proto(view), status_events=[convert.status_event_to_proto(e) for e in view.status_events]
        )

    async def ListFrameworks(
        self, request: jobs_pb2.ListFrameworksRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListFrameworksResponse:
        frameworks = await self._dispatcher.frameworks()
        return jobs_pb2.ListFrameworksResponse(
            frameworks=[
                jobs_pb2.FrameworkAvailability(
                    name=framework.name,
                    trainers=framework.trainers,
                    reachable_trainers=framework.reachable,
                    unreachable_reason=framework.unreachable_reason,
                )
                for framework in frameworks
            ]
        )

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        check_text(request.framework, "framework", limits.MAX_SHORT_NAME_CHARS)
        check_text(request.text, "text", limits.MAX_NAME_CHARS)
        size = convert.page_size(request.page_size, default=limits.DEFAULT_JOBS_PAGE, maximum=limits.MAX_JOBS_PAGE)
        statuses = _status_filter(request.statuses)
        scope = _scope("jobs", statuses, request.framework, request.text)
        after = None
        if request.page_token:
            created, pk = self._page_tokens.position(request.page_token, scope=scope, length=2)
            after = (convert.micros_to_time(created), pk)
        jobs, last = await self._backend.run(self._jobs_page, statuses, request.framework, request.text, size, after)
        token = "" if last is None else self._page_tokens.issue(scope, (convert.time_to_micros(last[0]), last[1]))
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    def _jobs_page(
        self, statuses: list[str], framework: str, text: str, size: int, after: tuple[dt.datetime, int] | None
    ) -> tuple[list[jobs_pb2.Job], tuple[dt.datetime, int] | None]:
        """A byte-bounded page of jobs (worker thread), each whole or, when it alone is too large, trimmed."""
        store = self._backend.store
        return convert.bounded_page(
            lambda position, limit: store.list_jobs(
                statuses=statuses, framework=framework, text=text, limit=limit, after=position
            ),
            lambda views: [convert.job_within(convert.job_to_proto(view), self._page_bytes) for view in views],
            lambda view: (view.job.created_at, view.job.id),
            after,
            size=size,
            budget=self._page_bytes,
            first_chunk=_FIRST_JOBS,
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        check_job_id(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        reason = limits.truncate_utf8(request.reason or "cancelled on request", limits.MAX_ERROR_MESSAGE_BYTES)
        reason = reason.replace("\x00", "\ufffd")  # no database text column holds NUL
        transition = await self._backend.run(
            self._backend.store.transition, request.job_id, statemachine.CANCELLED, reason=reason
        )
        view = await self._backend.run(self._backend.store.get_job, request.job_id)
        if transition.changed:
            self._backend.hub.publish(job_pk, POKE)
            # A trainer that accepted the job while its row could not be written (a database outage) is named only
            # by the dispatch attempt; a trainer without a run of the job answers NOT_FOUND. The job is CANCELLED
            # now: the trainer is told in the background (it may be slow or gone; the lease's sweep retries).
            self._dispatcher.cancel_soon(request.job_id, view.job.trainer_address or view.job.dispatch_attempt_address)
        return jobs_pb2.CancelJobResponse(job=convert.job_to_proto(view))

    async def ListMetrics(
        self, request: jobs_pb2.ListMetricsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListMetricsResponse:
        check_job_id(request.job_id)
        if len(request.keys) > limits.MAX_FILTER_KEYS:
            raise InvalidArgumentError(f"keys holds {len(request.keys)} keys; the limit is {limits.MAX_FILTER_KEYS}")
        for key in request.keys:
            check_metric_key(key, "keys")
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        size = convert.page_size(
            request.page_size, default=limits.DEFAULT_HISTORY_PAGE, maximum=limits.MAX_HISTORY_PAGE
        )
        keys = sorted(set(request.keys))
        scope = _scope("metrics", request.job_id, keys)
        after = self._after(request.page_token, scope)
        points, last = await self._backend.run(self._metrics_page, job_pk, after, size, keys, ())
        token = "" if last is None else self._page_tokens.issue(scope, (last,))
        return jobs_pb2.ListMetricsResponse(points=points, next_page_token=token)

    async def GetMetricSeries(
        self, request: jobs_pb2.GetMetricSeriesRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetMetricSeriesResponse:
        check_job_id(request.job_id)
        if len(request.keys) > limits.MAX_FILTER_KEYS:
            raise InvalidArgumentError(f"keys holds {len(request.keys)} keys; the limit is {limits.MAX_FILTER_KEYS}")
        for key in request.keys:
            check_metric_key(key, "keys")
        if request.start_key:
            check_metric_key(request.start_key, "start_key")
        max_points = check_int(request.max_points, "max_points", 0, MAX_SERIES_POINTS) or DEFAULT_SERIES_POINTS
        min_step = max_step = None
        if request.HasField("min_step"):
            min_step = check_int(request.min_step, "min_step", 0, limits.MAX_STEP)
        if request.HasField("max_step"):
            max_step = check_int(request.max_step, "max_step", 0, limits.MAX_STEP)
        if min_step is not None and max_step is not None and min_step > max_step:
            raise InvalidArgumentError(f"min_step ({min_step}) must not be above max_step ({max_step})")
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        keys = sorted(set(request.keys))
        return await self._backend.run(
            self._metric_series, job_pk, keys, max_points, min_step, max_step, request.start_key
        )

    def _metric_series(
        self,
        job_pk: int,
        keys: Sequence[str],
        max_points: int,
        min_step: int | None,
        max_step: int | None,
        start_key: str,
    ) -> jobs_pb2.GetMetricSeriesResponse:
        """GetMetricSeries's answer (worker thread): the database buckets, this builds the messages."""
        # Within half the largest message, like a history page: at most MAX_SERIES_KEYS keys, each with fewer
        # buckets when they would not fit.
        series, cursor, next_key = self._backend.store.metric_series(
            job_pk,
            keys,
            max_points,
            min_step,
            max_step,
            max_bytes=self._page_bytes,
            start_key=start_key,
            max_keys=MAX_SERIES_KEYS,
        )
        response = jobs_pb2.GetMetricSeriesResponse(last_sequence=cursor, next_key=next_key)
        for key, buckets in series.items():
            item = response.series.add(key=key, total_points=sum(b.points for b in buckets))
            for b in buckets:
                item.buckets.add(
                    first_step=b.first_step,
                    last_step=b.last_step,
                    min=b.min,
                    max=b.max,
                    last=b.last,
                    count=b.points,
                    first_epoch=b.first_epoch,
                    last_epoch=b.last_epoch,
                    nan_count=b.nan_count,
                )
        return response

    async def ListLogs(
        self, request: jobs_pb2.ListLogsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListLogsResponse:
        check_job_id(request.job_id)
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        size = convert.page_size(
            request.page_size, default=limits.DEFAULT_HISTORY_PAGE, maximum=limits.MAX_HISTORY_PAGE
        )
        if request.min_level and request.min_level not in common_pb2.LogLevel.values():
            raise InvalidArgumentError(f"min_level {request.min_level} is not a LogLevel")
        scope = _scope("logs", request.job_id, request.min_level)
        after = self._after(request.page_token, scope)
        records, last = await self._backend.run(self._logs_page, job_pk, after, size, request.min_level, ())
        token = "" if last is None else self._page_tokens.issue(scope, (last,))
        return jobs_pb2.ListLogsResponse(records=records, next_page_token=token)

    def _after(self, page_token: str, scope: str) -> int:
        """The sequence a history page token continues after (0 without a token)."""
        if not page_token:
            return 0
        (after,) = self._page_tokens.position(page_token, scope=scope, length=1)
        if after > limits.MAX_SEQUENCE:
            raise InvalidArgumentError(convert.BAD_PAGE_TOKEN)
        return after

    def _metrics_page(
        self, job_pk: int, after: int, size: int, keys: Sequence[str], within: Sequence[tuple[int, int]]
    ) -> tuple[list[telemetry_pb2.MetricPoint], int | None]:
        """A byte-bounded page of metric points after `after` (worker thread), and the sequence of its last point
        when more follow."""
        store = self._backend.store
        return convert.bounded_page(
            lambda position, limit: store.metrics_after(job_pk, position, limit, keys, within),
            convert.metric_points,
            lambda row: row[0],
            after,
            size=size,
            budget=self._page_bytes,
            first_chunk=size + 1,
        )

    def _logs_page(
        self, job_pk: int, after: int, size: int, min_level: int, within: Sequence[tuple[int, int]]
    ) -> tuple[list[telemetry_pb2.LogRecord], int | None]:
        """A byte-bounded page of log records after `after` (worker thread), and the sequence of its last record
        when more follow."""
        store = self._backend.store
        return convert.bounded_page(
            lambda position, limit: store.logs_after(job_pk, position, limit, min_level, within),
            convert.log_records,
            lambda record: record.sequence,
            after,
            size=size,
            budget=self._page_bytes,
            first_chunk=_FIRST_LOGS,
        )

    async def SubscribeTelemetry(
        self, request: jobs_pb2.SubscribeTelemetryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        check_job_id(request.job_id)
        cursor = jobs_pb2.TelemetryCursor()
        cursor.CopyFrom(request.after)
        check_int(cursor.metric_sequence, "cursor after.metric_sequence", 0, limits.MAX_SEQUENCE)
        check_int(cursor.log_sequence, "cursor after.log_sequence", 0, limits.MAX_SEQUENCE)
        check_int(cursor.status_sequence, "cursor after.status_sequence", 0, limits.MAX_STATUS_SEQUENCE)
        check_int(cursor.epoch_summary_sequence, "cursor after.epoch_summary_sequence", 0, limits.MAX_EPOCH + 1)
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        state = _Subscription(cursor)
        hub = self._backend.hub
        caller = _subscriber_key()
        self._subscriptions.open(caller)
        subscriber = hub.subscribe(job_pk)  # before the replay, so nothing committed meanwhile is missed
        try:
            while True:
                async for response in self._replay(job_pk, state):
                    yield response
                # The job had ended when the replay began: everything committed before its end has been sent
                # (whatever the cursor was, also when nothing lay after it).
                if state.ended and not request.keep_following:
                    return
                async for response in self._follow(subscriber, state):
                    yield response
        finally:
            hub.unsubscribe(job_pk, subscriber)
            self._subscriptions.close(caller)

    async def _follow(
        self, subscriber: Subscriber, state: _Subscription
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        """Yields live batches while they continue the cursor; returns when a database read is needed."""
        cursor = state.cursor
        while True:
            await subscriber.wait()
            if subscriber.closed:
                raise UnavailableError("the backend is shutting down; resubscribe from your last cursor")
            if subscriber.overflowed:
                dropped = subscriber.reset_overflow()
                subscriber.drain()
                yield jobs_pb2.SubscribeTelemetryResponse(lagged=jobs_pb2.Lagged(dropped_events=dropped), cursor=cursor)
                return
            for event in subscriber.drain():
                if not isinstance(event, Batch):
                    return  # a poke: re-read the database (it also covers the rest of the buffer)
                position = state.metrics if event.kind == METRICS_STREAM else state.logs
                if event.first_sequence != position.high + 1:
                    if event.last_sequence <= position.high and not position.holes:
                        continue  # already delivered by the replay
                    return  # a hole, or a late batch that may fill one: the database has the truth
                position.high = event.last_sequence
                state.sync()
                if event.kind == METRICS_STREAM:
                    yield jobs_pb2.SubscribeTelemetryResponse(
                        metrics=jobs_pb2.MetricBatch(points=event.items), cursor=cursor
                    )
                else:
                    yield jobs_pb2.SubscribeTelemetryResponse(
                        logs=jobs_pb2.LogBatch(records=event.items), cursor=cursor
                    )

    async def _replay(self, job_pk: int, state: _Subscription) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        """Yields everything committed after the cursor, and what filled the subscription's holes since it passed
        them, advancing the cursor. Status events are read first; those before a terminal status are sent first (a
        view shows the job's state before its telemetry), and a terminal one last, so everything committed before
        it is sent before it. Pages are read and turned into protobuf in a worker thread."""
        store, run, cursor = self._backend.store, self._backend.run, state.cursor
        status, events = await run(store.status_and_events_after, job_pk, cursor.status_sequence)
        state.ended = status in statemachine.TERMINAL
        # A terminal status is final: when there is one, it is the last event.
        split = len(events) - 1 if events and events[-1].to_status in statemachine.TERMINAL else len(events)
        events, ending = events[:split], events[split:]
        for event in events:
            cursor.status_sequence = event.sequence
            yield jobs_pb2.SubscribeTelemetryResponse(status_event=convert.status_event_to_proto(event), cursor=cursor)
        for position, page in ((state.metrics, self._metric_page), (state.logs, self._log_page)):
            for holes in position.hole_chunks():  # points that filled a hole late
                after = holes[0][0] - 1
                while built := await run(page, job_pk, after, holes):
                    sequences, response = built
                    position.fill(sequences)
                    after = sequences[-1]
                    yield state.stamp(response)
            while built := await run(page, job_pk, position.high, ()):
                sequences, response = built
                position.advance(sequences)
                yield state.stamp(response)
        while summaries := await run(self._summary_page, job_pk, cursor.epoch_summary_sequence - 1):
            for epoch, response in summaries:
                cursor.epoch_summary_sequence = epoch + 1  # epoch <= limits.MAX_EPOCH: no overflow
                yield state.stamp(response)
        for event in ending:
            cursor.status_sequence = event.sequence
            yield jobs_pb2.SubscribeTelemetryResponse(status_event=convert.status_event_to_proto(event), cursor=cursor)

    def _metric_page(
        self, job_pk: int, after: int, within: Sequence[tuple[int, int]]
    ) -> tuple[list[int], jobs_pb2.SubscribeTelemetryResponse] | None:
        """A replay page of metric points (worker thread): their sequences and the response, without cursor."""
        points, _ = self._metrics_page(job_pk, after, _REPLAY_PAGE, (), within)
        if not points:
            return None
        response = jobs_pb2.SubscribeTelemetryResponse(metrics=jobs_pb2.MetricBatch(points=points))
        return [point.sequence for point in points], response

    def _log_page(
        self, job_pk: int, after: int, within: Sequence[tuple[int, int]]
    ) -> tuple[list[int], jobs_pb2.SubscribeTelemetryResponse] | None:
        """A replay page of log records (worker thread): their sequences and the response, without cursor."""
        records, _ = self._logs_page(job_pk, after, _REPLAY_PAGE, 0, within)
        if not records:
            return None
        response = jobs_pb2.SubscribeTelemetryResponse(logs=jobs_pb2.LogBatch(records=records))
        return [record.sequence for record in records], response

    def _summary_page(self, job_pk: int, after_epoch: int) -> list[tuple[int, jobs_pb2.SubscribeTelemetryResponse]]:
        """A replay page of epoch summaries (worker thread): (epoch, response without cursor) each."""
        return [
            (summary.epoch, jobs_pb2.SubscribeTelemetryResponse(epoch_summary=convert.epoch_summary_to_proto(summary)))
            for summary in self._backend.store.epoch_summaries_after(job_pk, after_epoch)
        ]


def _status_filter(values: Sequence[int]) -> list[str]:
    """ListJobs's `statuses`: the stored names, each once, in order; INVALID_ARGUMENT naming the field for a value
    that is no status."""
    for value in values:
        if value == common_pb2.JOB_STATUS_UNSPECIFIED:
            raise InvalidArgumentError(
                "statuses holds JOB_STATUS_UNSPECIFIED, which no job has: leave statuses empty for every status"
            )
        if value not in common_pb2.JobStatus.values():
            raise InvalidArgumentError(f"statuses holds {value}, which is not a JobStatus")
    return sorted({statemachine.status_name(value) for value in values})


def _subscriber_key() -> tuple[str, str]:
    """Whose subscriptions a SubscribeTelemetry call counts among: its token's kind, and the job of a job token."""
    principal = CALLER.get()
    return principal.kind.value, principal.job_id if principal.kind is Kind.JOB else ""


def _too_many_subscriptions(caller: tuple[str, str], limit: int) -> str:
    kind, job_id = caller
    who = f"the telemetry token of job {job_id}" if job_id else f"the {kind} token"
    return (
        f"{who} already has {limit} SubscribeTelemetry call(s) open, the most allowed per caller "
        "(TP_MAX_SUBSCRIPTIONS_PER_CALLER); end one before subscribing again"
    )


def _scope(*parts: object) -> str:
    """What a page token is bound to: the request kind and every filter, unambiguously."""
    return json.dumps(parts, separators=(",", ":"))


class _Subscription:
    """One subscription's position: the cursor it reports and where it stands in each stream."""

    def __init__(self, cursor: jobs_pb2.TelemetryCursor) -> None:
        self.cursor = cursor
        self.metrics = StreamPosition(cursor.metric_sequence)
        self.logs = StreamPosition(cursor.log_sequence)
        self.ended = False

    def sync(self) -> None:
        """Puts the streams' low-water marks in the cursor."""
        self.cursor.metric_sequence = self.metrics.low()
        self.cursor.log_sequence = self.logs.low()

    def stamp(self, response: jobs_pb2.SubscribeTelemetryResponse) -> jobs_pb2.SubscribeTelemetryResponse:
        """The response with the current cursor."""
        self.sync()
        response.cursor.CopyFrom(self.cursor)
        return response
