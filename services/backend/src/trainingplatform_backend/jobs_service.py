"""JobsService: creating jobs, reading their history and following their telemetry live."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence

import grpc
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform_sdk.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from trainingplatform_sdk.spec import limits
from trainingplatform_sdk.spec.validation import validate_spec

from trainingplatform_backend import convert, statemachine
from trainingplatform_backend.auth import authorize_job
from trainingplatform_backend.dispatch import Dispatcher
from trainingplatform_backend.models import METRICS_STREAM
from trainingplatform_backend.subscriptions import POKE, Batch, StreamPosition, Subscriber
from trainingplatform_backend.telemetry_service import Backend

log = logging.getLogger(__name__)

_REPLAY_PAGE = 5000
_MAX_REQUEST_ID_CHARS = 64


class JobsServicer(jobs_pb2_grpc.JobsServiceServicer):
    """Implements JobsService; see jobs.proto for the contract."""

    def __init__(self, backend: Backend, dispatcher: Dispatcher) -> None:
        self._backend = backend
        self._dispatcher = dispatcher

    async def CreateJob(
        self, request: jobs_pb2.CreateJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CreateJobResponse:
        validate_spec(request.spec)
        if len(request.display_name) > limits.MAX_NAME_CHARS:
            raise InvalidArgumentError(f"display_name is longer than {limits.MAX_NAME_CHARS} characters")
        dispatch = request.dispatch if request.HasField("dispatch") else True
        if dispatch and not self._dispatcher.has_trainer(request.spec.framework):
            raise FailedPreconditionError(
                f"no trainer service is configured for framework {request.spec.framework!r} (set TP_TRAINERS), "
                "or create the job with dispatch=false and run the trainer yourself"
            )
        if len(request.request_id) > _MAX_REQUEST_ID_CHARS:
            raise InvalidArgumentError(f"request_id is longer than {_MAX_REQUEST_ID_CHARS} characters")
        request_hash = ""
        if request.request_id:
            # What a retry must repeat: the request without its key, `dispatch` made explicit.
            unkeyed = jobs_pb2.CreateJobRequest()
            unkeyed.CopyFrom(request)
            unkeyed.request_id = ""
            unkeyed.dispatch = dispatch
            request_hash = hashlib.sha256(unkeyed.SerializeToString(deterministic=True)).hexdigest()
        spec = request.spec
        job_id = str(uuid.uuid4())
        token, token_hash = self._dispatcher.job_token(job_id)
        view, created = await self._backend.run(
            self._backend.store.create_job,
            job_id=job_id,
            token_hash=token_hash,
            queued=dispatch,
            request_id=request.request_id,
            request_hash=request_hash,
            framework=spec.framework,
            model_name=spec.model.name,
            display_name=request.display_name,
            model_config=convert.message_to_dict(spec.model),
            dataset_config=convert.message_to_dict(spec.dataset),
            training_config=convert.message_to_dict(spec.training),
            advanced_config=convert.message_to_dict(spec.advanced),
        )
        if not created:
            # A retry: the job its key created, with the same token (derived again; only its hash is stored).
            token, token_hash = self._dispatcher.job_token(view.job.job_id)
            if token_hash != view.job.telemetry_token_hash:
                raise FailedPreconditionError(
                    f"request_id {request.request_id!r} created job {view.job.job_id}, whose telemetry token can no "
                    "longer be returned (the internal service token changed)"
                )
            log.info("CreateJob retried with request_id %r: job %s", request.request_id, view.job.job_id)
            return jobs_pb2.CreateJobResponse(job=convert.job_to_proto(view), telemetry_token=token)
        log.info("created job %s (%s %s)", view.job.job_id, spec.framework, spec.model.name)
        if dispatch:
            self._dispatcher.wake()  # the dispatcher hands it to a trainer, outside this call
        return jobs_pb2.CreateJobResponse(job=convert.job_to_proto(view), telemetry_token=token)

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        if not request.job_id:
            raise InvalidArgumentError("job_id is required")
        authorize_job(request.job_id)
        view = await self._backend.run(self._backend.store.get_job, request.job_id, with_events=True)
        return jobs_pb2.GetJobResponse(
            job=convert.job_to_proto(view), status_events=[convert.status_event_to_proto(e) for e in view.status_events]
        )

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        size = convert.page_size(request.page_size, default=limits.DEFAULT_JOBS_PAGE, maximum=limits.MAX_JOBS_PAGE)
        statuses = sorted({statemachine.status_name(s) for s in request.statuses})
        scope = f"jobs:{','.join(statuses)}:{request.framework}"
        after = None
        if request.page_token:
            position = convert.decode_page_token(request.page_token, scope=scope)
            try:
                after = (dt.datetime.fromisoformat(position["created"]), int(position["pk"]))
            except (KeyError, ValueError, TypeError):
                raise InvalidArgumentError("page_token is not a token this server issued") from None
        views = await self._backend.run(
            self._backend.store.list_jobs, statuses=statuses, framework=request.framework, limit=size + 1, after=after
        )
        token = ""
        if len(views) > size:
            views = views[:size]
            last = views[-1].job
            token = convert.encode_page_token({"scope": scope, "created": last.created_at.isoformat(), "pk": last.id})
        return jobs_pb2.ListJobsResponse(jobs=[convert.job_to_proto(v) for v in views], next_page_token=token)

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        job_pk = await self._backend.job_pk(request.job_id)
        reason = limits.truncate_utf8(request.reason or "cancelled on request", limits.MAX_ERROR_MESSAGE_BYTES)
        transition = await self._backend.run(
            self._backend.store.transition, request.job_id, statemachine.CANCELLED, reason=reason
        )
        view = await self._backend.run(self._backend.store.get_job, request.job_id)
        if transition.changed:
            self._backend.hub.publish(job_pk, POKE)
            await self._dispatcher.cancel(request.job_id, view.job.trainer_address)
        return jobs_pb2.CancelJobResponse(job=convert.job_to_proto(view))

    async def ListMetrics(
        self, request: jobs_pb2.ListMetricsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListMetricsResponse:
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        size = convert.page_size(
            request.page_size, default=limits.DEFAULT_HISTORY_PAGE, maximum=limits.MAX_HISTORY_PAGE
        )
        keys = sorted(set(request.keys))
        scope = f"metrics:{request.job_id}:{','.join(keys)}"
        after = self._after(request.page_token, scope)
        rows = await self._backend.run(self._backend.store.metrics_after, job_pk, after, size + 1, keys)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = convert.encode_page_token({"scope": scope, "after": rows[-1][0]})
        return jobs_pb2.ListMetricsResponse(points=convert.metric_points(rows), next_page_token=token)

    async def ListLogs(
        self, request: jobs_pb2.ListLogsRequest, context: grpc.aio.ServicerContext
    ) -> jobs_pb2.ListLogsResponse:
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        size = convert.page_size(
            request.page_size, default=limits.DEFAULT_HISTORY_PAGE, maximum=limits.MAX_HISTORY_PAGE
        )
        if request.min_level and request.min_level not in common_pb2.LogLevel.values():
            raise InvalidArgumentError(f"min_level {request.min_level} is not a LogLevel")
        scope = f"logs:{request.job_id}:{request.min_level}"
        after = self._after(request.page_token, scope)
        rows = await self._backend.run(self._backend.store.logs_after, job_pk, after, size + 1, request.min_level)
        token = ""
        if len(rows) > size:
            rows = rows[:size]
            token = convert.encode_page_token({"scope": scope, "after": rows[-1].sequence})
        return jobs_pb2.ListLogsResponse(records=convert.log_records(rows), next_page_token=token)

    @staticmethod
    def _after(page_token: str, scope: str) -> int:
        if not page_token:
            return 0
        position = convert.decode_page_token(page_token, scope=scope)
        after = position.get("after")
        if not isinstance(after, int) or after < 0:
            raise InvalidArgumentError("page_token is not a token this server issued")
        return after

    async def SubscribeTelemetry(
        self, request: jobs_pb2.SubscribeTelemetryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        authorize_job(request.job_id)
        job_pk = await self._backend.job_pk(request.job_id)
        cursor = jobs_pb2.TelemetryCursor()
        cursor.CopyFrom(request.after)
        if min(cursor.metric_sequence, cursor.log_sequence, cursor.status_sequence, cursor.epoch_summary_sequence) < 0:
            raise InvalidArgumentError("cursor positions must be >= 0")
        state = _Subscription(cursor)
        hub = self._backend.hub
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
        them, advancing the cursor. Status events are read first and sent last, so everything committed before a
        terminal status is sent before it. Pages are read and turned into protobuf in a worker thread."""
        store, run, cursor = self._backend.store, self._backend.run, state.cursor
        status, events = await run(store.status_and_events_after, job_pk, cursor.status_sequence)
        state.ended = status in statemachine.TERMINAL
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
        for event in events:
            cursor.status_sequence = event.sequence
            yield jobs_pb2.SubscribeTelemetryResponse(status_event=convert.status_event_to_proto(event), cursor=cursor)

    def _metric_page(
        self, job_pk: int, after: int, within: Sequence[tuple[int, int]]
    ) -> tuple[list[int], jobs_pb2.SubscribeTelemetryResponse] | None:
        """A replay page of metric points (worker thread): their sequences and the response, without cursor."""
        rows = self._backend.store.metrics_after(job_pk, after, _REPLAY_PAGE, within=within)
        if not rows:
            return None
        response = jobs_pb2.SubscribeTelemetryResponse(metrics=jobs_pb2.MetricBatch(points=convert.metric_points(rows)))
        return [row[0] for row in rows], response

    def _log_page(
        self, job_pk: int, after: int, within: Sequence[tuple[int, int]]
    ) -> tuple[list[int], jobs_pb2.SubscribeTelemetryResponse] | None:
        """A replay page of log records (worker thread): their sequences and the response, without cursor."""
        records = self._backend.store.logs_after(job_pk, after, _REPLAY_PAGE, within=within)
        if not records:
            return None
        response = jobs_pb2.SubscribeTelemetryResponse(logs=jobs_pb2.LogBatch(records=convert.log_records(records)))
        return [record.sequence for record in records], response

    def _summary_page(self, job_pk: int, after_epoch: int) -> list[tuple[int, jobs_pb2.SubscribeTelemetryResponse]]:
        """A replay page of epoch summaries (worker thread): (epoch, response without cursor) each."""
        return [
            (summary.epoch, jobs_pb2.SubscribeTelemetryResponse(epoch_summary=convert.epoch_summary_to_proto(summary)))
            for summary in self._backend.store.epoch_summaries_after(job_pk, after_epoch)
        ]


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
