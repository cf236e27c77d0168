import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from trainingplatform.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MetricPoint(_message.Message):
    __slots__ = ("key", "value", "step", "epoch", "wall_time", "sequence")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: float
    step: int
    epoch: int
    wall_time: float
    sequence: int
    def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., wall_time: _Optional[float] = ..., sequence: _Optional[int] = ...) -> None: ...

class MetricColumns(_message.Message):
    __slots__ = ("keys", "key_indexes", "values", "steps", "epochs", "wall_times", "sequences")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_INDEXES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    WALL_TIMES_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    key_indexes: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    steps: _containers.RepeatedScalarFieldContainer[int]
    epochs: _containers.RepeatedScalarFieldContainer[int]
    wall_times: _containers.RepeatedScalarFieldContainer[float]
    sequences: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., key_indexes: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., steps: _Optional[_Iterable[int]] = ..., epochs: _Optional[_Iterable[int]] = ..., wall_times: _Optional[_Iterable[float]] = ..., sequences: _Optional[_Iterable[int]] = ...) -> None: ...

class StreamMetricsRequest(_message.Message):
    __slots__ = ("job_id", "points", "columns")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    columns: MetricColumns
    def __init__(self, job_id: _Optional[str] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., columns: _Optional[_Union[MetricColumns, _Mapping]] = ...) -> None: ...

class StreamMetricsResponse(_message.Message):
    __slots__ = ("points_committed", "duplicates_ignored", "last_committed_sequence", "missing_sequences")
    POINTS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_IGNORED_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MISSING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    points_committed: int
    duplicates_ignored: int
    last_committed_sequence: int
    missing_sequences: int
    def __init__(self, points_committed: _Optional[int] = ..., duplicates_ignored: _Optional[int] = ..., last_committed_sequence: _Optional[int] = ..., missing_sequences: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("level", "message", "epoch", "step", "wall_time", "sequence", "source", "rank")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    level: _common_pb2.LogLevel
    message: str
    epoch: int
    step: int
    wall_time: float
    sequence: int
    source: str
    rank: int
    def __init__(self, level: _Optional[_Union[_common_pb2.LogLevel, str]] = ..., message: _Optional[str] = ..., epoch: _Optional[int] = ..., step: _Optional[int] = ..., wall_time: _Optional[float] = ..., sequence: _Optional[int] = ..., source: _Optional[str] = ..., rank: _Optional[int] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("job_id", "records")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    def __init__(self, job_id: _Optional[str] = ..., records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ...) -> None: ...

class StreamLogsResponse(_message.Message):
    __slots__ = ("records_committed", "duplicates_ignored", "last_committed_sequence", "missing_sequences")
    RECORDS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_IGNORED_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMITTED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MISSING_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    records_committed: int
    duplicates_ignored: int
    last_committed_sequence: int
    missing_sequences: int
    def __init__(self, records_committed: _Optional[int] = ..., duplicates_ignored: _Optional[int] = ..., last_committed_sequence: _Optional[int] = ..., missing_sequences: _Optional[int] = ...) -> None: ...

class UpdateStatusRequest(_message.Message):
    __slots__ = ("job_id", "status", "reason", "error_message", "error_detail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_DETAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: _common_pb2.JobStatus
    reason: str
    error_message: str
    error_detail: str
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[_Union[_common_pb2.JobStatus, str]] = ..., reason: _Optional[str] = ..., error_message: _Optional[str] = ..., error_detail: _Optional[str] = ...) -> None: ...

class UpdateStatusResponse(_message.Message):
    __slots__ = ("status", "changed")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    status: _common_pb2.JobStatus
    changed: bool
    def __init__(self, status: _Optional[_Union[_common_pb2.JobStatus, str]] = ..., changed: _Optional[bool] = ...) -> None: ...

class EpochSummary(_message.Message):
    __slots__ = ("epoch", "metrics", "duration_seconds", "end_time")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    metrics: _containers.ScalarMap[str, float]
    duration_seconds: float
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, epoch: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., duration_seconds: _Optional[float] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordEpochSummaryRequest(_message.Message):
    __slots__ = ("job_id", "summary")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    summary: EpochSummary
    def __init__(self, job_id: _Optional[str] = ..., summary: _Optional[_Union[EpochSummary, _Mapping]] = ...) -> None: ...

class RecordEpochSummaryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "uri", "size_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    uri: str
    size_bytes: int
    def __init__(self, name: _Optional[str] = ..., uri: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ReportRunInfoRequest(_message.Message):
    __slots__ = ("job_id", "mlflow_run_id", "mlflow_tracking_uri", "artifacts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MLFLOW_TRACKING_URI_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    mlflow_run_id: str
    mlflow_tracking_uri: str
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    def __init__(self, job_id: _Optional[str] = ..., mlflow_run_id: _Optional[str] = ..., mlflow_tracking_uri: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ...) -> None: ...

class ReportRunInfoResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStreamCursorRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetStreamCursorResponse(_message.Message):
    __slots__ = ("last_metric_sequence", "last_log_sequence", "max_message_bytes", "unwatched")
    LAST_METRIC_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_LOG_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UNWATCHED_FIELD_NUMBER: _ClassVar[int]
    last_metric_sequence: int
    last_log_sequence: int
    max_message_bytes: int
    unwatched: bool
    def __init__(self, last_metric_sequence: _Optional[int] = ..., last_log_sequence: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., unwatched: _Optional[bool] = ...) -> None: ...
