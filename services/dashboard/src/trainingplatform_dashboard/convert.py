"""Backend messages as the JSON the browser reads (the HTTP contract's shapes).

JSON has no NaN or infinity: a non-finite number is sent as the string "NaN", "Infinity" or "-Infinity" (what
JavaScript's `Number()` turns back into the number).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote as url_quote

from google.protobuf import json_format
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk.spec import AdvancedConfig

from trainingplatform_dashboard.backend import MAX_METRIC_KEYS, SeriesPages

__all__ = [
    "dumps",
    "epoch_summary_json",
    "job_json",
    "log_json",
    "number",
    "point_json",
    "series_json",
    "spec_json",
    "status_event_json",
    "status_name",
    "timestamp",
]

_STATUS_PREFIX = "JOB_STATUS_"
_LEVEL_PREFIX = "LOG_LEVEL_"


def number(value: float) -> float | str:
    """A JSON-safe number: NaN and the infinities as strings."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def dumps(data: Any) -> str:
    """Compact JSON (non-finite numbers must already be strings: see `number`)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def status_name(value: int) -> str:
    """`RUNNING` for JOB_STATUS_RUNNING."""
    name = common_pb2.JobStatus.Name(value) if value in common_pb2.JobStatus.values() else str(value)
    return name.removeprefix(_STATUS_PREFIX)


def level_name(value: int) -> str:
    """`INFO` for LOG_LEVEL_INFO."""
    name = common_pb2.LogLevel.Name(value) if value in common_pb2.LogLevel.values() else str(value)
    return name.removeprefix(_LEVEL_PREFIX)


def timestamp(stamp: Any, present: bool = True) -> str | None:
    """ISO 8601 UTC (`2026-01-02T03:04:05.678Z`), or None for an unset time."""
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    moment = dt.datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _wall(seconds: float) -> str | None:
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def mlflow_run_url(tracking_uri: str, run_id: str) -> str | None:
    """The MLflow UI's page of a run, when the tracking server is one a browser can open (http or https)."""
    if not run_id or not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/runs/{url_quote(run_id, safe='')}"


def job_json(job: jobs_pb2.Job, latest_metric: Mapping[str, Any] | None = None, now: float | None = None) -> dict:
    """A Job object of the contract."""
    started = job.HasField("start_time")
    ended = job.HasField("end_time")
    duration: float | None = None
    if started:
        start = job.start_time.seconds + job.start_time.nanos / 1e9
        end = job.end_time.seconds + job.end_time.nanos / 1e9 if ended else (now or dt.datetime.now(dt.UTC).timestamp())
        duration = round(max(0.0, end - start), 3)
    spec = job.spec
    dataset = spec.dataset.name or spec.dataset.path
    return {
        "job_id": job.job_id,
        "display_name": job.display_name,
        "status": status_name(job.status),
        "framework": spec.framework,
        "model": spec.model.name,
        "dataset": dataset,
        "created_at": timestamp(job.create_time, job.HasField("create_time")),
        "started_at": timestamp(job.start_time, started),
        "ended_at": timestamp(job.end_time, ended),
        "duration_s": duration,
        "error_message": job.error_message,
        "latest_metric": dict(latest_metric) if latest_metric else None,
        "mlflow_run_url": mlflow_run_url(job.mlflow_tracking_uri, job.mlflow_run_id),
    }


def spec_json(spec: common_pb2.JobSpec) -> dict:
    """The spec: {framework, model, dataset, training, advanced{..., extra}}."""

    def section(message: Any) -> dict:
        return json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    try:
        advanced = AdvancedConfig.from_proto(spec.advanced).to_dict()
    except Exception:  # a spec stored before a rule existed: show it raw rather than not at all
        advanced = section(spec.advanced)
    return {
        "framework": spec.framework,
        "model": section(spec.model),
        "dataset": section(spec.dataset),
        "training": section(spec.training),
        "advanced": _json_safe(advanced),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def status_event_json(event: jobs_pb2.StatusEvent) -> dict:
    """{status, at, message} (message: the error if any, else the reason)."""
    return {
        "status": status_name(event.to_status),
        "at": timestamp(event.time, event.HasField("time")),
        "message": event.error_message or event.reason,
    }


def point_json(point: Any) -> dict:
    """{key, value, step, epoch, wall_time, sequence} of a MetricPoint."""
    return {
        "key": point.key,
        "value": number(point.value),
        "step": point.step if point.HasField("step") else None,
        "epoch": point.epoch if point.HasField("epoch") else None,
        "wall_time": point.wall_time,
        "sequence": point.sequence,
    }


def log_json(record: Any) -> dict:
    """{sequence, level, message, source, wall_time, epoch, step} of a LogRecord."""
    return {
        "sequence": record.sequence,
        "level": level_name(record.level),
        "message": record.message,
        "source": record.source,
        "wall_time": record.wall_time,
        "epoch": record.epoch if record.HasField("epoch") else None,
        "step": record.step if record.HasField("step") else None,
    }


def epoch_summary_json(summary: Any) -> dict:
    """{epoch, metrics, start_time, end_time} of an EpochSummary (times ISO 8601 or null)."""
    end = summary.end_time.seconds + summary.end_time.nanos / 1e9 if summary.HasField("end_time") else 0.0
    start = end - summary.duration_seconds if end and summary.duration_seconds > 0 else 0.0
    return {
        "epoch": summary.epoch,
        "metrics": {key: number(value) for key, value in sorted(summary.metrics.items())},
        "start_time": _wall(start),
        "end_time": _wall(end),
    }


def series_json(pages: SeriesPages) -> dict:
    """{"series": [{key, total_points, buckets, last_sequence}], "last_sequence", "next_key", "message"} of the
    GetMetricSeries answers of one read (`Backend.metric_series_pages`).

    Each series has the `last_sequence` of the answer it came in (the points of that key it includes); the top
    `last_sequence` is the lowest of them, where a live stream resumes. `next_key` is set when the read stopped at
    `MAX_METRIC_KEYS` keys, and `message` then says so in a sentence."""
    message = ""
    if pages.next_key:
        message = (
            f"This job has more than {pages.keys} metric keys; the dashboard reads at most {MAX_METRIC_KEYS}: the "
            f"keys from {pages.next_key!r} on (in key order) are left out."
        )
    return {
        "series": [
            {
                "key": series.key,
                "total_points": series.total_points,
                "buckets": [_bucket(bucket) for bucket in series.buckets],
                "last_sequence": last_sequence,
            }
            for series, last_sequence in pages.series
        ],
        "last_sequence": pages.last_sequence,
        "next_key": pages.next_key,
        "message": message,
    }


def _bucket(bucket: jobs_pb2.MetricBucket) -> dict:
    return {
        "first_step": bucket.first_step,
        "last_step": bucket.last_step,
        "min": number(bucket.min),
        "max": number(bucket.max),
        "last": number(bucket.last),
        "count": bucket.count,
        "first_epoch": bucket.first_epoch if bucket.HasField("first_epoch") else None,
        "last_epoch": bucket.last_epoch if bucket.HasField("last_epoch") else None,
    }


def artifacts_json(artifacts: Iterable[Any]) -> list[dict]:
    """[{name, uri}]."""
    return [{"name": artifact.name, "uri": artifact.uri} for artifact in artifacts]
