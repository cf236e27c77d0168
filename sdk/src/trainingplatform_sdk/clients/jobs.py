"""Typed Python clients of the platform's services, for other services and the CLI.

    from trainingplatform_sdk.clients import JobsClient

    with JobsClient("127.0.0.1:50051", token) as jobs:
        created = jobs.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=3)
        for event in jobs.subscribe(created.job.job_id):
            ...

Callers never touch protobufs: results are frozen dataclasses and errors are `PlatformError` subclasses that
carry the gRPC status. Idempotent calls are retried by gRPC itself on UNAVAILABLE (a service config with a
retry policy); StartTraining is not. CreateJob is made idempotent by its `request_id`: `create_job` sends a new
one per job and retries UNAVAILABLE and DEADLINE_EXCEEDED with the same one, so a lost response never makes a
second job. Every call has a deadline.
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import timestamp_pb2
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc

from trainingplatform_sdk.clients._base import Client, raise_platform_error, resolve_connection
from trainingplatform_sdk.errors import InvalidArgumentError, PlatformError, UnavailableError
from trainingplatform_sdk.spec.configs import AdvancedConfig
from trainingplatform_sdk.spec.validation import validate_spec

# --- results ------------------------------------------------------------------------------------------------


def _time(stamp: timestamp_pb2.Timestamp, present: bool = True) -> dt.datetime | None:
    return stamp.ToDatetime(dt.UTC) if present else None


def _status(value: int) -> str:
    return common_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_")


TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


JOB_STATUS_NAMES = tuple(
    value.name.removeprefix("JOB_STATUS_").lower()
    for value in common_pb2.JobStatus.DESCRIPTOR.values
    if value.number != common_pb2.JOB_STATUS_UNSPECIFIED
)
"""The job statuses a caller may name (any case): pending, queued, running, completed, failed, cancelled."""
LOG_LEVEL_NAMES = tuple(
    value.name.removeprefix("LOG_LEVEL_").lower()
    for value in common_pb2.LogLevel.DESCRIPTOR.values
    if value.number != common_pb2.LOG_LEVEL_UNSPECIFIED
)
"""The log levels a caller may name (any case): debug, info, warning, error, critical."""


def _enum_value(name: str, names: tuple[str, ...], prefix: str, enum: Any, what: str) -> int:
    wanted = name.strip().lower()
    if wanted not in names:
        raise ValueError(f"unknown {what} {name!r}: must be one of {', '.join(names)}")
    return int(enum.Value(f"{prefix}{wanted.upper()}"))


def job_status_value(name: str) -> int:
    """The `common_pb2.JobStatus` of a status name (`running`, `COMPLETED`, ...).

    Raises:
        ValueError: not one of JOB_STATUS_NAMES; the message lists them.
    """
    return _enum_value(name, JOB_STATUS_NAMES, "JOB_STATUS_", common_pb2.JobStatus, "job status")


def log_level_value(name: str) -> int:
    """The `common_pb2.LogLevel` of a level name (`info`, `WARNING`, ...).

    Raises:
        ValueError: not one of LOG_LEVEL_NAMES; the message lists them.
    """
    return _enum_value(name, LOG_LEVEL_NAMES, "LOG_LEVEL_", common_pb2.LogLevel, "log level")


@dataclass(frozen=True)
class StatusChange:
    """One status transition of a job."""

    sequence: int
    from_status: str
    to_status: str
    reason: str
    error_message: str
    time: dt.datetime | None


@dataclass(frozen=True)
class Job:
    """A training job as the backend reports it."""

    job_id: str
    status: str
    """`PENDING`, `QUEUED`, `RUNNING`, `COMPLETED`, `FAILED` or `CANCELLED`."""
    framework: str
    model: str
    dataset: str
    epochs: int
    display_name: str
    error_message: str
    error_detail: str
    created_at: dt.datetime | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    trainer_address: str
    mlflow_run_id: str
    mlflow_tracking_uri: str
    artifacts: dict[str, str]
    """Artifact name -> URI (`s3://...` or `file://...`)."""
    last_metric_sequence: int
    last_log_sequence: int
    status_events: tuple[StatusChange, ...] = ()
    waiting_reason: str = ""
    """While QUEUED and no trainer took the job yet: each trainer's last answer (busy, unreachable)."""

    @property
    def finished(self) -> bool:
        """Whether the job reached a terminal status."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class FrameworkAvailability:
    """A framework the backend dispatches jobs to (a trainer service is configured for it), and whether its
    trainers answer now."""

    name: str
    """As `create_job(framework=...)` takes it: `timm`, `ultralytics`."""
    trainers: int
    """Trainer services configured for it (`TP_TRAINERS`)."""
    reachable_trainers: int
    """How many of them answered just now; 0: a job of it waits QUEUED until one does (`TP_DISPATCH_TIMEOUT_S`)."""
    unreachable_reason: str
    """When none answered: each trainer's address and error; else empty."""


@dataclass(frozen=True)
class CreatedJob:
    """The result of create_job: the job and its telemetry token (returned only once)."""

    job: Job
    telemetry_token: str = field(repr=False)


@dataclass(frozen=True)
class MetricPoint:
    """One committed metric value."""

    key: str
    value: float
    step: int | None
    epoch: int | None
    wall_time: float
    sequence: int


@dataclass(frozen=True)
class MetricBucket:
    """The points of one key within a step bucket of `metric_series`: draw `min`..`max` as a band and `last` as the
    line, and no spike is hidden."""

    first_step: int
    last_step: int
    min: float
    """Lowest value, NaN left out (NaN when every value is NaN)."""
    max: float
    """Highest value, NaN left out (NaN when every value is NaN)."""
    last: float
    """Value of the most recently logged point (the one at `last_step` when steps only grow); may be NaN."""
    count: int
    nan_count: int
    first_epoch: int | None
    last_epoch: int | None


@dataclass(frozen=True)
class MetricSeries:
    """One key's bucketed series: buckets in step order, never overlapping."""

    key: str
    buckets: tuple[MetricBucket, ...]
    total_points: int


@dataclass(frozen=True)
class MetricSeriesResult:
    """What `metric_series` returns: a series per key (in key order) and the metric cursor it includes."""

    series: dict[str, MetricSeries]
    last_sequence: int
    """Pass `Cursor(metric_sequence=last_sequence)` to `subscribe` to continue live without a gap or duplicate."""


@dataclass(frozen=True)
class LogLine:
    """One committed log record."""

    level: str
    message: str
    epoch: int | None
    step: int | None
    wall_time: float
    sequence: int
    source: str
    rank: int


@dataclass(frozen=True)
class EpochSummary:
    """The summary of one epoch."""

    epoch: int
    metrics: dict[str, float]
    duration_seconds: float


@dataclass(frozen=True)
class Cursor:
    """A position in a job's telemetry; pass it back to subscribe() to resume."""

    metric_sequence: int = 0
    log_sequence: int = 0
    status_sequence: int = 0
    epoch_summary_sequence: int = 0


@dataclass(frozen=True)
class TelemetryEvent:
    """One event of a subscription; exactly one of the payload fields is set, according to `kind`."""

    kind: str
    """`metrics`, `logs`, `status`, `epoch_summary` or `lagged`."""
    cursor: Cursor
    metrics: tuple[MetricPoint, ...] = ()
    logs: tuple[LogLine, ...] = ()
    status: StatusChange | None = None
    epoch_summary: EpochSummary | None = None


def _job(message: jobs_pb2.Job, events: Sequence[jobs_pb2.StatusEvent] = ()) -> Job:
    spec = message.spec
    return Job(
        job_id=message.job_id,
        status=_status(message.status),
        framework=spec.framework,
        model=spec.model.name,
        dataset=spec.dataset.name or spec.dataset.path,
        epochs=spec.training.epochs,
        display_name=message.display_name,
        error_message=message.error_message,
        error_detail=message.error_detail,
        created_at=_time(message.create_time, message.HasField("create_time")),
        started_at=_time(message.start_time, message.HasField("start_time")),
        ended_at=_time(message.end_time, message.HasField("end_time")),
        trainer_address=message.trainer_address,
        mlflow_run_id=message.mlflow_run_id,
        mlflow_tracking_uri=message.mlflow_tracking_uri,
        artifacts={a.name: a.uri for a in message.artifacts},
        last_metric_sequence=message.cursor.last_metric_sequence,
        last_log_sequence=message.cursor.last_log_sequence,
        status_events=tuple(_status_change(e) for e in events),
        waiting_reason=message.waiting_reason,
    )


def _status_change(event: jobs_pb2.StatusEvent) -> StatusChange:
    return StatusChange(
        sequence=event.sequence,
        from_status=_status(event.from_status),
        to_status=_status(event.to_status),
        reason=event.reason,
        error_message=event.error_message,
        time=_time(event.time, event.HasField("time")),
    )


def _metric(point: Any) -> MetricPoint:
    return MetricPoint(
        key=point.key,
        value=point.value,
        step=point.step if point.HasField("step") else None,
        epoch=point.epoch if point.HasField("epoch") else None,
        wall_time=point.wall_time,
        sequence=point.sequence,
    )


def _series(message: jobs_pb2.MetricSeries) -> MetricSeries:
    buckets = tuple(
        MetricBucket(
            first_step=b.first_step,
            last_step=b.last_step,
            min=b.min,
            max=b.max,
            last=b.last,
            count=b.count,
            nan_count=b.nan_count,
            first_epoch=b.first_epoch if b.HasField("first_epoch") else None,
            last_epoch=b.last_epoch if b.HasField("last_epoch") else None,
        )
        for b in message.buckets
    )
    return MetricSeries(message.key, buckets, message.total_points)


def _log(record: Any) -> LogLine:
    return LogLine(
        level=common_pb2.LogLevel.Name(record.level).removeprefix("LOG_LEVEL_"),
        message=record.message,
        epoch=record.epoch if record.HasField("epoch") else None,
        step=record.step if record.HasField("step") else None,
        wall_time=record.wall_time,
        sequence=record.sequence,
        source=record.source,
        rank=record.rank,
    )


class JobsClient(Client):
    """The backend's JobsService: create jobs, read their history, follow them live."""

    def __init__(self, address: str, token: str, **kwargs: Any) -> None:
        """Args:
        address: the backend, `host:port`, `grpc://host:port` or `https://host:port`.
        token: the internal token, the read token, or a job's telemetry token (for that job's reads).
        **kwargs: `timeout` (seconds per call, default 30) and TLS material (`root_certificates`,
            `private_key`, `certificate_chain`, PEM bytes).
        """
        super().__init__(address, token, **kwargs)
        self._stub = jobs_pb2_grpc.JobsServiceStub(self._channel)

    @classmethod
    def from_env(cls, **kwargs: Any) -> JobsClient:
        """A client of the backend found as `tp` finds it (`resolve_connection`): TP_BACKEND_ADDRESS, BACKEND_API_URL,
        the per-user config `tp up` writes, then 127.0.0.1:50051; the token likewise."""
        connection = resolve_connection()
        return cls(connection.address, connection.token, **kwargs)

    def create_job(
        self,
        *,
        framework: str,
        model: str,
        dataset: str = "",
        dataset_path: str = "",
        epochs: int = 1,
        batch_size: int = 0,
        learning_rate: float = 0.0,
        image_size: int = 0,
        pretrained: bool = False,
        device: str = "",
        log_every_n_steps: int = 0,
        advanced: AdvancedConfig | Mapping[str, Any] | None = None,
        display_name: str = "",
        dispatch: bool = True,
        request_id: str = "",
        attempts: int = 5,
    ) -> CreatedJob:
        """Creates a job and (unless `dispatch` is False) hands it to a trainer of its framework.

        The call is sent with an idempotency key (`request_id`, a new UUID unless given) and retried with the
        same key up to `attempts` times when the backend is unreachable or the deadline passes: a retry whose
        first try was in fact committed returns that job, never a second one.

        Raises:
            InvalidArgumentError: a bad field (the message names it), including advanced config types.
            FailedPreconditionError: no trainer is configured for the framework.
        """
        if isinstance(advanced, AdvancedConfig):
            advanced_config = advanced
        else:
            try:
                advanced_config = AdvancedConfig.from_mapping(advanced or {})
            except ValueError as error:
                raise InvalidArgumentError(str(error)) from None
        spec = common_pb2.JobSpec(
            framework=framework,
            model=common_pb2.ModelConfig(name=model, pretrained=pretrained, image_size=image_size),
            dataset=common_pb2.DatasetConfig(name=dataset, path=dataset_path),
            training=common_pb2.TrainingConfig(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                device=device,
                log_every_n_steps=log_every_n_steps,
            ),
            advanced=advanced_config.to_proto(),
        )
        validate_spec(spec)  # the backend's own checks: a bad field fails here, without a round trip
        request = jobs_pb2.CreateJobRequest(
            spec=spec, display_name=display_name, dispatch=dispatch, request_id=request_id or str(uuid.uuid4())
        )
        delay = 0.2
        for attempt in range(1, max(1, attempts) + 1):
            try:
                response = self._call(self._stub.CreateJob, request, timeout=max(self.timeout, 60.0))
            except UnavailableError:  # UNAVAILABLE or DEADLINE_EXCEEDED: the job may or may not exist
                if attempt >= attempts:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 3.0)
                continue
            return CreatedJob(_job(response.job), response.telemetry_token)
        raise AssertionError("unreachable")

    def get_job(self, job_id: str) -> Job:
        """One job with its status history."""
        response = self._call(self._stub.GetJob, jobs_pb2.GetJobRequest(job_id=job_id))
        return _job(response.job, response.status_events)

    def list_frameworks(self) -> tuple[FrameworkAvailability, ...]:
        """The frameworks this backend can run a job of (those with a trainer service configured), each with how
        many of its trainers answer now. A framework missing here is refused by `create_job` (INVALID_ARGUMENT)."""
        response = self._call(self._stub.ListFrameworks, jobs_pb2.ListFrameworksRequest())
        return tuple(
            FrameworkAvailability(f.name, f.trainers, f.reachable_trainers, f.unreachable_reason)
            for f in response.frameworks
        )

    def list_jobs(
        self, *, statuses: Sequence[str] = (), framework: str = "", text: str = "", page_size: int = 100
    ) -> Iterator[Job]:
        """Every job, newest first, optionally filtered (`text`: in the display name, job id or model name, ASCII
        letters in any case); pages are fetched as the iterator advances.

        Raises:
            ValueError: a status that is not one of JOB_STATUS_NAMES (any case); the message lists them.
        """
        values = [cast(common_pb2.JobStatus, job_status_value(s)) for s in statuses]
        token = ""
        while True:
            page = self._call(
                self._stub.ListJobs,
                jobs_pb2.ListJobsRequest(
                    statuses=values, framework=framework, text=text, page_size=page_size, page_token=token
                ),
            )
            yield from (_job(j) for j in page.jobs)
            token = page.next_page_token
            if not token:
                return

    def cancel_job(self, job_id: str, reason: str = "") -> Job:
        """Cancels a job (its trainer is told to stop).

        Raises:
            FailedPreconditionError: the job already completed or failed.
        """
        return _job(self._call(self._stub.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id, reason=reason)).job)

    def metrics(self, job_id: str, *, keys: Sequence[str] = (), page_size: int = 10_000) -> Iterator[MetricPoint]:
        """A job's committed metric points in sequence order."""
        token = ""
        while True:
            page = self._call(
                self._stub.ListMetrics,
                jobs_pb2.ListMetricsRequest(job_id=job_id, keys=list(keys), page_size=page_size, page_token=token),
            )
            yield from (_metric(p) for p in page.points)
            token = page.next_page_token
            if not token:
                return

    def metric_series(
        self,
        job_id: str,
        *,
        keys: Sequence[str] = (),
        max_points: int = 0,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> MetricSeriesResult:
        """A job's metric series bucketed by step on the server (GetMetricSeries): one call whatever their length.

        Args:
            job_id: The job.
            keys: Only these keys (at most 1000); empty means every key of the job.
            max_points: At most this many buckets per key, 1 to 10000; 0 means the server's default, 1000. A key
                with fewer distinct steps in the range gets one bucket per step (exact values).
            min_step: Only points at this step or above (a zoom, with `max_step`); None means from the first.
            max_step: Only points at this step or below; None means to the last.

        Returns:
            The series of every key with points in the range (points without a step are in none), in key order,
            and `last_sequence`, the metric cursor the answer includes.

        Raises:
            InvalidArgumentError: a bad key, max_points out of range, min_step above max_step.
            NotFoundError: no such job.
            PermissionDeniedError: a job token of another job.
        """
        request = jobs_pb2.GetMetricSeriesRequest(job_id=job_id, keys=list(keys), max_points=max_points)
        if min_step is not None:
            request.min_step = min_step
        if max_step is not None:
            request.max_step = max_step
        response = self._call(self._stub.GetMetricSeries, request)
        return MetricSeriesResult(
            series={s.key: _series(s) for s in response.series}, last_sequence=response.last_sequence
        )

    def logs(self, job_id: str, *, min_level: str = "", page_size: int = 10_000) -> Iterator[LogLine]:
        """A job's committed log records in sequence order, from `min_level` (e.g. `WARNING`) up.

        Raises:
            ValueError: a `min_level` that is not one of LOG_LEVEL_NAMES (any case); the message lists them.
        """
        level = common_pb2.LOG_LEVEL_UNSPECIFIED
        if min_level:
            level = cast(common_pb2.LogLevel, log_level_value(min_level))
        token = ""
        while True:
            page = self._call(
                self._stub.ListLogs,
                jobs_pb2.ListLogsRequest(job_id=job_id, min_level=level, page_size=page_size, page_token=token),
            )
            yield from (_log(r) for r in page.records)
            token = page.next_page_token
            if not token:
                return

    def subscribe(
        self,
        job_id: str,
        *,
        after: Cursor | None = None,
        keep_following: bool = False,
        max_reconnect_s: float = 60.0,
        on_reconnect: Callable[[PlatformError | None], None] | None = None,
    ) -> Iterator[TelemetryEvent]:
        """Replays the job's telemetry after `after`, then follows it live, until its terminal status (or
        forever with `keep_following`). A broken subscription is resumed from the last cursor, with backoff,
        for up to `max_reconnect_s` without progress.

        `on_reconnect`, when given, hears of it: called with the error each time a broken subscription is about
        to be resumed, and with None once the backend answers again (the channel connected again, or the resumed
        subscription delivered an event), so that a caller can say the backend is gone, and back."""
        cursor = after or Cursor()
        delay, deadline = 0.2, time.monotonic() + max_reconnect_s
        broken = False
        while True:
            request = jobs_pb2.SubscribeTelemetryRequest(
                job_id=job_id, keep_following=keep_following, after=jobs_pb2.TelemetryCursor(**cursor.__dict__)
            )
            try:
                for response in self._stub.SubscribeTelemetry(request, metadata=self._metadata):
                    event = _event(response)
                    cursor = event.cursor
                    delay, deadline = 0.2, time.monotonic() + max_reconnect_s
                    if broken and on_reconnect is not None:
                        broken = False
                        on_reconnect(None)
                    yield event
                return
            except grpc.RpcError as error:
                if (
                    error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
                    or time.monotonic() > deadline
                ):
                    raise_platform_error(error)
                if on_reconnect is not None:
                    broken = True
                    on_reconnect(_platform_error(error))
            pause = delay * random.uniform(0.5, 1.0)
            if broken and on_reconnect is not None:
                # Waits for the channel to connect again (or the pause to end): a quiet job's caller hears that
                # the backend is back when it is, not with the next event.
                started = time.monotonic()
                try:
                    grpc.channel_ready_future(self._channel).result(timeout=pause)
                except grpc.FutureTimeoutError:
                    pass
                else:
                    broken = False
                    delay, deadline = 0.2, time.monotonic() + max_reconnect_s
                    on_reconnect(None)
                pause -= time.monotonic() - started
            time.sleep(max(pause, 0.0))
            delay = min(delay * 2, 5.0)


def _platform_error(error: grpc.RpcError) -> PlatformError:
    """The `PlatformError` of a failed call, to pass on rather than raise."""
    try:
        raise_platform_error(error)
    except PlatformError as platform_error:
        return platform_error


def _event(response: jobs_pb2.SubscribeTelemetryResponse) -> TelemetryEvent:
    c = response.cursor
    cursor = Cursor(c.metric_sequence, c.log_sequence, c.status_sequence, c.epoch_summary_sequence)
    kind = response.WhichOneof("event")
    if kind == "metrics":
        return TelemetryEvent("metrics", cursor, metrics=tuple(_metric(p) for p in response.metrics.points))
    if kind == "logs":
        return TelemetryEvent("logs", cursor, logs=tuple(_log(r) for r in response.logs.records))
    if kind == "status_event":
        return TelemetryEvent("status", cursor, status=_status_change(response.status_event))
    if kind == "epoch_summary":
        summary = response.epoch_summary
        return TelemetryEvent(
            "epoch_summary",
            cursor,
            epoch_summary=EpochSummary(summary.epoch, dict(summary.metrics), summary.duration_seconds),
        )
    return TelemetryEvent("lagged", cursor)
