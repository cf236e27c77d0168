"""Conversions between stored rows and the contract's protobuf messages, and page tokens."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from typing import Any, cast

from google.protobuf import json_format, timestamp_pb2
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import InvalidArgumentError

from trainingplatform_backend.models import LogRecord, StatusEvent
from trainingplatform_backend.statemachine import status_value
from trainingplatform_backend.store import JobView, SummaryView, nan_from_null


def timestamp(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp of an aware datetime (None stays None)."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def message_to_dict(message: Any) -> dict[str, Any]:
    """A message as the JSON document stored in the database (field names as in the proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def job_to_proto(view: JobView) -> jobs_pb2.Job:
    """The Job message of a stored job."""
    job = view.job
    spec = common_pb2.JobSpec(framework=job.framework)
    json_format.ParseDict(job.model_config, spec.model)
    json_format.ParseDict(job.dataset_config, spec.dataset)
    json_format.ParseDict(job.training_config, spec.training)
    json_format.ParseDict(job.advanced_config, spec.advanced)
    message = jobs_pb2.Job(
        job_id=job.job_id,
        spec=spec,
        status=status_value(job.status),
        error_message=job.error_message,
        error_detail=job.error_detail,
        create_time=timestamp(job.created_at),
        update_time=timestamp(job.updated_at),
        start_time=timestamp(job.started_at),
        end_time=timestamp(job.ended_at),
        trainer_address=job.trainer_address,
        trainer_run_id=job.trainer_run_id,
        mlflow_run_id=job.mlflow_run_id,
        mlflow_tracking_uri=job.mlflow_tracking_uri,
        artifacts=[telemetry_pb2.Artifact(name=a.name, uri=a.uri, size_bytes=a.size_bytes) for a in view.artifacts],
        display_name=job.display_name,
        cursor=telemetry_pb2.GetStreamCursorResponse(
            last_metric_sequence=view.cursor[0], last_log_sequence=view.cursor[1]
        ),
    )
    return message


def status_event_to_proto(event: StatusEvent) -> jobs_pb2.StatusEvent:
    """The StatusEvent message of a stored transition."""
    return jobs_pb2.StatusEvent(
        sequence=event.sequence,
        from_status=common_pb2.JOB_STATUS_UNSPECIFIED
        if event.from_status == "UNSPECIFIED"
        else status_value(event.from_status),
        to_status=status_value(event.to_status),
        reason=event.reason,
        error_message=event.error_message,
        time=timestamp(event.created_at),
    )


def metric_points(rows: Iterable[tuple[int, str, float | None, int | None, int | None, float]]) -> list[Any]:
    """MetricPoint messages of stored rows (sequence, key, value, step, epoch, wall_time)."""
    points = []
    for sequence, key, value, step, epoch, wall_time in rows:
        point = telemetry_pb2.MetricPoint(key=key, value=nan_from_null(value), wall_time=wall_time, sequence=sequence)
        if step is not None:
            point.step = step
        if epoch is not None:
            point.epoch = epoch
        points.append(point)
    return points


def log_records(rows: Iterable[LogRecord]) -> list[telemetry_pb2.LogRecord]:
    """LogRecord messages of stored rows."""
    records = []
    for row in rows:
        record = telemetry_pb2.LogRecord(
            level=cast(common_pb2.LogLevel, row.level),
            message=row.message,
            wall_time=row.wall_time,
            sequence=row.sequence,
            source=row.source,
            rank=row.rank,
        )
        if row.epoch is not None:
            record.epoch = row.epoch
        if row.step is not None:
            record.step = row.step
        records.append(record)
    return records


def epoch_summary_to_proto(summary: SummaryView) -> telemetry_pb2.EpochSummary:
    """The EpochSummary message of a stored summary."""
    return telemetry_pb2.EpochSummary(
        epoch=summary.epoch,
        metrics=summary.metrics,
        duration_seconds=summary.duration_seconds,
        end_time=timestamp(summary.end_time),
    )


def encode_page_token(position: dict[str, Any]) -> str:
    """An opaque page token for a keyset position."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def decode_page_token(token: str, *, scope: str) -> dict[str, Any]:
    """The position in a page token made by `encode_page_token` for the same request kind and filters.

    Raises:
        InvalidArgumentError: the token is malformed or was issued for another request.
    """
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        raise InvalidArgumentError("page_token is not a token this server issued") from None
    if not isinstance(position, dict) or position.get("scope") != scope:
        raise InvalidArgumentError(
            "page_token was issued for a different request or filters; start from an empty token"
        )
    return position


def page_size(requested: int, *, default: int, maximum: int) -> int:
    """The page size to use for a request.

    Raises:
        InvalidArgumentError: a negative or too large size.
    """
    if requested < 0 or requested > maximum:
        raise InvalidArgumentError(f"page_size must be between 0 and {maximum}; got {requested}")
    return requested or default
