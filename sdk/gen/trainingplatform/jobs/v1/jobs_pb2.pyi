import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from trainingplatform.common.v1 import common_pb2 as _common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "status", "error_message", "error_detail", "create_time", "update_time", "start_time", "end_time", "trainer_address", "trainer_run_id", "mlflow_run_id", "mlflow_tracking_uri", "artifacts", "display_name", "cursor", "waiting_reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TRAINER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRAINER_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    WAITING_REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: _common_pb2.JobSpec
    status: _common_pb2.JobStatus
    error_message: str
    error_detail: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    trainer_address: str
    trainer_run_id: str
    mlflow_run_id: str
    mlflow_tracking_uri: str
    artifacts: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.Artifact]
    display_name: str
    cursor: _telemetry_pb2.GetStreamCursorResponse
    waiting_reason: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., status: _Optional[_Union[_common_pb2.JobStatus, str]] = ..., error_message: _Optional[str] = ..., error_detail: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trainer_address: _Optional[str] = ..., trainer_run_id: _Optional[str] = ..., mlflow_run_id: _Optional[str] = ..., mlflow_tracking_uri: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[_telemetry_pb2.Artifact, _Mapping]]] = ..., display_name: _Optional[str] = ..., cursor: _Optional[_Union[_telemetry_pb2.GetStreamCursorResponse, _Mapping]] = ..., waiting_reason: _Optional[str] = ...) -> None: ...

class StatusEvent(_message.Message):
    __slots__ = ("sequence", "from_status", "to_status", "reason", "error_message", "time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    FROM_STATUS_FIELD_NUMBER: _ClassVar[int]
    TO_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    from_status: _common_pb2.JobStatus
    to_status: _common_pb2.JobStatus
    reason: str
    error_message: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., from_status: _Optional[_Union[_common_pb2.JobStatus, str]] = ..., to_status: _Optional[_Union[_common_pb2.JobStatus, str]] = ..., reason: _Optional[str] = ..., error_message: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "display_name", "dispatch", "request_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DISPATCH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.JobSpec
    display_name: str
    dispatch: bool
    request_id: str
    def __init__(self, spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., display_name: _Optional[str] = ..., dispatch: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job", "telemetry_token")
    JOB_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job: Job
    telemetry_token: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., telemetry_token: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "status_events")
    JOB_FIELD_NUMBER: _ClassVar[int]
    STATUS_EVENTS_FIELD_NUMBER: _ClassVar[int]
    job: Job
    status_events: _containers.RepeatedCompositeFieldContainer[StatusEvent]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., status_events: _Optional[_Iterable[_Union[StatusEvent, _Mapping]]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("statuses", "framework", "page_size", "page_token", "text")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[_common_pb2.JobStatus]
    framework: str
    page_size: int
    page_token: str
    text: str
    def __init__(self, statuses: _Optional[_Iterable[_Union[_common_pb2.JobStatus, str]]] = ..., framework: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListMetricsRequest(_message.Message):
    __slots__ = ("job_id", "keys", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMetricsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.MetricPoint]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[_telemetry_pb2.MetricPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListLogsRequest(_message.Message):
    __slots__ = ("job_id", "min_level", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    min_level: _common_pb2.LogLevel
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., min_level: _Optional[_Union[_common_pb2.LogLevel, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLogsResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.LogRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[_telemetry_pb2.LogRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class TelemetryCursor(_message.Message):
    __slots__ = ("metric_sequence", "log_sequence", "status_sequence", "epoch_summary_sequence")
    METRIC_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LOG_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SUMMARY_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    metric_sequence: int
    log_sequence: int
    status_sequence: int
    epoch_summary_sequence: int
    def __init__(self, metric_sequence: _Optional[int] = ..., log_sequence: _Optional[int] = ..., status_sequence: _Optional[int] = ..., epoch_summary_sequence: _Optional[int] = ...) -> None: ...

class SubscribeTelemetryRequest(_message.Message):
    __slots__ = ("job_id", "after", "keep_following")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    KEEP_FOLLOWING_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    after: TelemetryCursor
    keep_following: bool
    def __init__(self, job_id: _Optional[str] = ..., after: _Optional[_Union[TelemetryCursor, _Mapping]] = ..., keep_following: _Optional[bool] = ...) -> None: ...

class Lagged(_message.Message):
    __slots__ = ("dropped_events",)
    DROPPED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    dropped_events: int
    def __init__(self, dropped_events: _Optional[int] = ...) -> None: ...

class SubscribeTelemetryResponse(_message.Message):
    __slots__ = ("metrics", "logs", "status_event", "epoch_summary", "lagged", "cursor")
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_EVENT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    LAGGED_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    metrics: MetricBatch
    logs: LogBatch
    status_event: StatusEvent
    epoch_summary: _telemetry_pb2.EpochSummary
    lagged: Lagged
    cursor: TelemetryCursor
    def __init__(self, metrics: _Optional[_Union[MetricBatch, _Mapping]] = ..., logs: _Optional[_Union[LogBatch, _Mapping]] = ..., status_event: _Optional[_Union[StatusEvent, _Mapping]] = ..., epoch_summary: _Optional[_Union[_telemetry_pb2.EpochSummary, _Mapping]] = ..., lagged: _Optional[_Union[Lagged, _Mapping]] = ..., cursor: _Optional[_Union[TelemetryCursor, _Mapping]] = ...) -> None: ...

class MetricBatch(_message.Message):
    __slots__ = ("points",)
    POINTS_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.MetricPoint]
    def __init__(self, points: _Optional[_Iterable[_Union[_telemetry_pb2.MetricPoint, _Mapping]]] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.LogRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[_telemetry_pb2.LogRecord, _Mapping]]] = ...) -> None: ...

class GetMetricSeriesRequest(_message.Message):
    __slots__ = ("job_id", "keys", "max_points", "min_step", "max_step", "start_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    MIN_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_FIELD_NUMBER: _ClassVar[int]
    START_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    max_points: int
    min_step: int
    max_step: int
    start_key: str
    def __init__(self, job_id: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., max_points: _Optional[int] = ..., min_step: _Optional[int] = ..., max_step: _Optional[int] = ..., start_key: _Optional[str] = ...) -> None: ...

class MetricBucket(_message.Message):
    __slots__ = ("first_step", "last_step", "min", "max", "last", "count", "first_epoch", "last_epoch", "nan_count")
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    NAN_COUNT_FIELD_NUMBER: _ClassVar[int]
    first_step: int
    last_step: int
    min: float
    max: float
    last: float
    count: int
    first_epoch: int
    last_epoch: int
    nan_count: int
    def __init__(self, first_step: _Optional[int] = ..., last_step: _Optional[int] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., last: _Optional[float] = ..., count: _Optional[int] = ..., first_epoch: _Optional[int] = ..., last_epoch: _Optional[int] = ..., nan_count: _Optional[int] = ...) -> None: ...

class MetricSeries(_message.Message):
    __slots__ = ("key", "buckets", "total_points")
    KEY_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_POINTS_FIELD_NUMBER: _ClassVar[int]
    key: str
    buckets: _containers.RepeatedCompositeFieldContainer[MetricBucket]
    total_points: int
    def __init__(self, key: _Optional[str] = ..., buckets: _Optional[_Iterable[_Union[MetricBucket, _Mapping]]] = ..., total_points: _Optional[int] = ...) -> None: ...

class GetMetricSeriesResponse(_message.Message):
    __slots__ = ("series", "last_sequence", "next_key")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    NEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[MetricSeries]
    last_sequence: int
    next_key: str
    def __init__(self, series: _Optional[_Iterable[_Union[MetricSeries, _Mapping]]] = ..., last_sequence: _Optional[int] = ..., next_key: _Optional[str] = ...) -> None: ...

class ListFrameworksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFrameworksResponse(_message.Message):
    __slots__ = ("frameworks",)
    FRAMEWORKS_FIELD_NUMBER: _ClassVar[int]
    frameworks: _containers.RepeatedCompositeFieldContainer[FrameworkAvailability]
    def __init__(self, frameworks: _Optional[_Iterable[_Union[FrameworkAvailability, _Mapping]]] = ...) -> None: ...

class FrameworkAvailability(_message.Message):
    __slots__ = ("name", "trainers", "reachable_trainers", "unreachable_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRAINERS_FIELD_NUMBER: _ClassVar[int]
    REACHABLE_TRAINERS_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    trainers: int
    reachable_trainers: int
    unreachable_reason: str
    def __init__(self, name: _Optional[str] = ..., trainers: _Optional[int] = ..., reachable_trainers: _Optional[int] = ..., unreachable_reason: _Optional[str] = ...) -> None: ...
