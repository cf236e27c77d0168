"""JobsService: creating jobs, reading their history and following their telemetry live."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator

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
from trainingplatform_backend.subscriptions import POKE, Batch, Subscriber
from trainingplatform_backend.telemetry_service import Backend

log = logging.getLogger(__name__)

_REPLAY_PAGE = 5000


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
        spec = request.spec
        view, token = await self._backend.run(
            self._backend.store.create_job,
            framework=spec.framework,
            model_name=spec.model.name,
            display_name=request.display_name,
            model_config=convert.message_to_dict(spec.model),
            dataset_config=convert.message_to_dict(spec.dataset),
            training_config=convert.message_to_dict(spec.training),
            advanced_config=convert.message_to_dict(spec.advanced),
        )
        log.info("created job %s (%s %s)", view.job.job_id, spec.framework, spec.model.name)
        if dispatch:
            await self._dispatcher.dispatch(view.job.job_id, spec, token)
            view = await self._backend.run(self._backend.store.get_job, view.job.job_id)
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
        hub = self._backend.hub
        subscriber = hub.subscribe(job_pk)  # before the replay, so nothing committed meanwhile is missed
        try:
            while True:
                ended = False
                async for response in self._replay(job_pk, cursor):
                    yield response
                    if (
                        response.HasField("status_event")
                        and statemachine.status_name(response.status_event.to_status) in statemachine.TERMINAL
                    ):
                        ended = True
                if ended and not request.keep_following:
                    return
                async for response in self._follow(subscriber, cursor):
                    yield response
        finally:
            hub.unsubscribe(job_pk, subscriber)

    async def _follow(
        self, subscriber: Subscriber, cursor: jobs_pb2.TelemetryCursor
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        """Yields live batches while they continue the cursor; returns when a database read is needed."""
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
                field = "metric_sequence" if event.kind == METRICS_STREAM else "log_sequence"
                position = getattr(cursor, field)
                if event.last_sequence <= position:
                    continue  # already delivered by the replay
                if event.first_sequence != position + 1:
                    return  # a hole (another process, a late batch): the database has the truth
                setattr(cursor, field, event.last_sequence)
                if event.kind == METRICS_STREAM:
                    yield jobs_pb2.SubscribeTelemetryResponse(
                        metrics=jobs_pb2.MetricBatch(points=event.items), cursor=cursor
                    )
                else:
                    yield jobs_pb2.SubscribeTelemetryResponse(
                        logs=jobs_pb2.LogBatch(records=event.items), cursor=cursor
                    )

    async def _replay(
        self, job_pk: int, cursor: jobs_pb2.TelemetryCursor
    ) -> AsyncIterator[jobs_pb2.SubscribeTelemetryResponse]:
        """Yields everything committed after the cursor, advancing it. Status events are read first and sent
        last, so everything committed before a terminal status is sent before it."""
        store, run = self._backend.store, self._backend.run
        events = await run(store.status_events_after, job_pk, cursor.status_sequence)
        while True:
            rows = await run(store.metrics_after, job_pk, cursor.metric_sequence, _REPLAY_PAGE)
            if not rows:
                break
            cursor.metric_sequence = rows[-1][0]
            yield jobs_pb2.SubscribeTelemetryResponse(
                metrics=jobs_pb2.MetricBatch(points=convert.metric_points(rows)), cursor=cursor
            )
        while True:
            records = await run(store.logs_after, job_pk, cursor.log_sequence, _REPLAY_PAGE)
            if not records:
                break
            cursor.log_sequence = records[-1].sequence
            yield jobs_pb2.SubscribeTelemetryResponse(
                logs=jobs_pb2.LogBatch(records=convert.log_records(records)), cursor=cursor
            )
        for summary in await run(store.epoch_summaries_after, job_pk, cursor.epoch_summary_sequence - 1):
            cursor.epoch_summary_sequence = summary.epoch + 1
            yield jobs_pb2.SubscribeTelemetryResponse(
                epoch_summary=convert.epoch_summary_to_proto(summary), cursor=cursor
            )
        for event in events:
            cursor.status_sequence = event.sequence
            yield jobs_pb2.SubscribeTelemetryResponse(status_event=convert.status_event_to_proto(event), cursor=cursor)
