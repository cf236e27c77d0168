"""The bad-input table: every case gets a clear status, nothing is half-stored, the server stays up."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def good_point(seq: int = 1) -> telemetry_pb2.MetricPoint:
    return telemetry_pb2.MetricPoint(key="loss", value=1.0, wall_time=1.0, sequence=seq)


def metrics(job_id: str, *points: telemetry_pb2.MetricPoint) -> telemetry_pb2.StreamMetricsRequest:
    # A valid point first: a batch with one bad point must be refused whole.
    return telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[good_point(), *points])


def point(**fields) -> telemetry_pb2.MetricPoint:
    values = {"key": "loss", "value": 1.0, "wall_time": 1.0, "sequence": 2, **fields}
    return telemetry_pb2.MetricPoint(**values)


def columns(job_id: str, **changes) -> telemetry_pb2.StreamMetricsRequest:
    """Two valid points as MetricColumns, with `changes` replacing whole columns (a list) or adding points."""
    values = {
        "keys": ["loss", "lr"],
        "key_indexes": [0, 1],
        "values": [1.0, 0.1],
        "steps": [1, -1],
        "epochs": [],
        "wall_times": [1.0, 1.0],
        "sequences": [1, 2],
        **changes,
    }
    return telemetry_pb2.StreamMetricsRequest(job_id=job_id, columns=telemetry_pb2.MetricColumns(**values))


def stream_columns(b, t, request):
    return b.telemetry().StreamMetrics(iter([request]), metadata=auth(t))


def log_request(job_id: str, **fields) -> telemetry_pb2.StreamLogsRequest:
    values = {"level": common_pb2.LOG_LEVEL_INFO, "message": "m", "wall_time": 1.0, "sequence": 1, **fields}
    return telemetry_pb2.StreamLogsRequest(job_id=job_id, records=[telemetry_pb2.LogRecord(**values)])


def spec(**changes) -> common_pb2.JobSpec:
    message = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    for path, value in changes.items():
        target = message
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return message


def nan_struct() -> common_pb2.JobSpec:
    message = spec()
    message.advanced.extra.update({"mosaic": 1.0})
    message.advanced.extra.fields["mosaic"].number_value = math.nan
    return message


UNKNOWN_JOB = "00000000-0000-0000-0000-000000000000"

# (name, call(backend, job_id, token) -> None, expected code, text the message must contain)
LONG_UNKNOWN_JOB = "j" * 128  # the longest valid job id

CASES = [
    (
        "unknown job with the longest id: quoted cut short",
        lambda b, j, t: b.jobs().GetJob(
            jobs_pb2.GetJobRequest(job_id=LONG_UNKNOWN_JOB), metadata=auth(b.internal_token)
        ),
        grpc.StatusCode.NOT_FOUND,
        "...[128 characters] does not exist",
    ),
    (
        "unknown job",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(UNKNOWN_JOB)]), metadata=auth(b.internal_token)),
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
    ),
    (
        "empty key",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(key=""))]), metadata=auth(t)),
        INVALID,
        "must not be empty",
    ),
    (
        "over-long key",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(key="k" * 251))]), metadata=auth(t)),
        INVALID,
        "250",
    ),
    (
        "control character in key",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(key="a\nb"))]), metadata=auth(t)),
        INVALID,
        "control",
    ),
    (
        "negative step",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(step=-1))]), metadata=auth(t)),
        INVALID,
        "step",
    ),
    (
        "negative epoch",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(epoch=-3))]), metadata=auth(t)),
        INVALID,
        "epoch",
    ),
    (
        "sequence zero",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(sequence=0))]), metadata=auth(t)),
        INVALID,
        "start at 1",
    ),
    (
        "NaN wall time",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(wall_time=math.nan))]), metadata=auth(t)),
        INVALID,
        "wall_time",
    ),
    (
        "wall time past the year 9999",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(wall_time=1e300))]), metadata=auth(t)),
        INVALID,
        "9999-12-31",
    ),
    (
        "wall time before the year 1",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([metrics(j, point(wall_time=-1e30))]), metadata=auth(t)),
        INVALID,
        "0001-01-01",
    ),
    (
        "points and columns in one message",
        lambda b, j, t: stream_columns(
            b,
            t,
            telemetry_pb2.StreamMetricsRequest.FromString(
                columns(j).SerializeToString() + metrics(j).SerializeToString()
            ),
        ),
        INVALID,
        "not both",
    ),
    (
        "columns of different lengths",
        lambda b, j, t: stream_columns(b, t, columns(j, values=[1.0])),
        INVALID,
        "values has 1 entries",
    ),
    (
        "steps column shorter than the points",
        lambda b, j, t: stream_columns(b, t, columns(j, steps=[3])),
        INVALID,
        "steps has 1 entries",
    ),
    (
        "key index past the keys",
        lambda b, j, t: stream_columns(b, t, columns(j, key_indexes=[0, 2])),
        INVALID,
        "key index 2 is past the 2 key(s)",
    ),
    (
        "step below -1 in columns",
        lambda b, j, t: stream_columns(b, t, columns(j, steps=[1, -2])),
        INVALID,
        "-1 in columns for none",
    ),
    (
        "control character in a column key",
        lambda b, j, t: stream_columns(b, t, columns(j, keys=["loss", "l\tr"])),
        INVALID,
        "columns.keys",
    ),
    (
        "NaN wall time in columns",
        lambda b, j, t: stream_columns(b, t, columns(j, wall_times=[1.0, math.nan])),
        INVALID,
        "wall_time",
    ),
    (
        "wall time past the year 9999 in columns",
        lambda b, j, t: stream_columns(b, t, columns(j, wall_times=[1.0, 3e11])),
        INVALID,
        "wall_time",
    ),
    (
        "sequence zero in columns",
        lambda b, j, t: stream_columns(b, t, columns(j, sequences=[0, 1])),
        INVALID,
        "start at 1",
    ),
    (
        "first message names no job",
        lambda b, j, t: b.telemetry().StreamMetrics(
            iter([telemetry_pb2.StreamMetricsRequest(points=[good_point()])]), metadata=auth(t)
        ),
        INVALID,
        "must name the job",
    ),
    (
        "empty stream",
        lambda b, j, t: b.telemetry().StreamMetrics(iter([]), metadata=auth(t)),
        INVALID,
        "before any message",
    ),
    (
        "second job in one stream",
        lambda b, j, t: b.telemetry().StreamMetrics(
            iter([metrics(j), telemetry_pb2.StreamMetricsRequest(job_id=UNKNOWN_JOB)]), metadata=auth(b.internal_token)
        ),
        INVALID,
        "one StreamMetrics call carries one job",
    ),
    (
        "message over the size limit",
        lambda b, j, t: b.telemetry().StreamMetrics(
            iter(
                [
                    telemetry_pb2.StreamMetricsRequest(
                        job_id=j, points=[point(key="k" * 200, sequence=s) for s in range(1, 45_000)]
                    )
                ]
            ),
            metadata=auth(t),
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
    (
        "unknown log level",
        lambda b, j, t: b.telemetry().StreamLogs(iter([log_request(j, level=99)]), metadata=auth(t)),
        INVALID,
        "LogLevel",
    ),
    (
        "unspecified log level",
        lambda b, j, t: b.telemetry().StreamLogs(iter([log_request(j, level=0)]), metadata=auth(t)),
        INVALID,
        "LogLevel",
    ),
    (
        "log wall time past the year 9999",
        lambda b, j, t: b.telemetry().StreamLogs(iter([log_request(j, wall_time=1e300)]), metadata=auth(t)),
        INVALID,
        "wall_time",
    ),
    (
        "negative log epoch",
        lambda b, j, t: b.telemetry().StreamLogs(iter([log_request(j, epoch=-1)]), metadata=auth(t)),
        INVALID,
        "epoch",
    ),
    (
        "unspecified status",
        lambda b, j, t: b.telemetry().UpdateStatus(telemetry_pb2.UpdateStatusRequest(job_id=j), metadata=auth(t)),
        INVALID,
        "status is required",
    ),
    (
        "unknown status value",
        lambda b, j, t: b.telemetry().UpdateStatus(
            telemetry_pb2.UpdateStatusRequest(job_id=j, status=42), metadata=auth(t)
        ),
        INVALID,
        "unknown job status",
    ),
    (
        "negative summary epoch",
        lambda b, j, t: b.telemetry().RecordEpochSummary(
            telemetry_pb2.RecordEpochSummaryRequest(job_id=j, summary=telemetry_pb2.EpochSummary(epoch=-1)),
            metadata=auth(t),
        ),
        INVALID,
        "epoch",
    ),
    (
        "epoch summary without a summary",
        lambda b, j, t: b.telemetry().RecordEpochSummary(
            telemetry_pb2.RecordEpochSummaryRequest(job_id=j), metadata=auth(t)
        ),
        INVALID,
        "summary is required",
    ),
    (
        "artifact without URI",
        lambda b, j, t: b.telemetry().ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(job_id=j, artifacts=[telemetry_pb2.Artifact(name="best")]),
            metadata=auth(t),
        ),
        INVALID,
        "URI",
    ),
    (
        "a glob as MLflow run id",  # `tp gc` of an older `tp` globbed it in the data directory's mlartifacts
        lambda b, j, t: b.telemetry().ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(job_id=j, mlflow_run_id="*"), metadata=auth(t)
        ),
        INVALID,
        "mlflow_run_id '*' is not an MLflow run id",
    ),
    (
        "a path as MLflow run id",
        lambda b, j, t: b.telemetry().ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(job_id=j, mlflow_run_id="../.."), metadata=auth(t)
        ),
        INVALID,
        "letters, digits, `_` or `-`",
    ),
    (
        "job without framework",
        lambda b, j, t: b.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec(framework=""), dispatch=False), metadata=auth(b.internal_token)
        ),
        INVALID,
        "spec.framework",
    ),
    (
        "zero epochs",
        lambda b, j, t: b.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec(training__epochs=0), dispatch=False), metadata=auth(b.internal_token)
        ),
        INVALID,
        "epochs",
    ),
    (
        "momentum out of range",
        lambda b, j, t: b.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec(advanced__momentum=1.5), dispatch=False),
            metadata=auth(b.internal_token),
        ),
        INVALID,
        "momentum",
    ),
    (
        "NaN in advanced extra",
        lambda b, j, t: b.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=nan_struct(), dispatch=False), metadata=auth(b.internal_token)
        ),
        INVALID,
        "spec.advanced.extra.mosaic",
    ),
    (
        "dispatch with no trainer configured",
        lambda b, j, t: b.jobs().CreateJob(jobs_pb2.CreateJobRequest(spec=spec()), metadata=auth(b.internal_token)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TP_TRAINERS",
    ),
    (
        "malformed page token",
        lambda b, j, t: b.jobs().ListMetrics(jobs_pb2.ListMetricsRequest(job_id=j, page_token="%%%"), metadata=auth(t)),
        INVALID,
        "page_token",
    ),
    (
        "negative page size",
        lambda b, j, t: b.jobs().ListLogs(jobs_pb2.ListLogsRequest(job_id=j, page_size=-1), metadata=auth(t)),
        INVALID,
        "page_size",
    ),
    (
        "negative subscription cursor",
        lambda b, j, t: next(
            iter(
                b.jobs().SubscribeTelemetry(
                    jobs_pb2.SubscribeTelemetryRequest(job_id=j, after=jobs_pb2.TelemetryCursor(metric_sequence=-1)),
                    metadata=auth(t),
                )
            )
        ),
        INVALID,
        "cursor",
    ),
    (
        "list jobs by an unknown status: the message names the field",
        lambda b, j, t: b.jobs().ListJobs(jobs_pb2.ListJobsRequest(statuses=[1, 99]), metadata=auth(b.read_token)),
        INVALID,
        "statuses holds 99, which is not a JobStatus",
    ),
    (
        "list jobs by the unspecified status: the message names the field",
        lambda b, j, t: b.jobs().ListJobs(jobs_pb2.ListJobsRequest(statuses=[0]), metadata=auth(b.read_token)),
        INVALID,
        "statuses holds JOB_STATUS_UNSPECIFIED",
    ),
    (
        "get job without id",
        lambda b, j, t: b.jobs().GetJob(jobs_pb2.GetJobRequest(), metadata=auth(b.internal_token)),
        INVALID,
        "job_id is required",
    ),
]


def test_bad_input_table(backend):
    failures = []
    for name, call, code, text in CASES:
        job_id, token = backend.create_job()
        try:
            call(backend, job_id, token)
        except grpc.RpcError as error:
            if error.code() != code or text not in (error.details() or ""):
                failures.append(f"{name}: got {error.code().name} {error.details()!r}, want {code.name} ~{text!r}")
        else:
            failures.append(f"{name}: succeeded, want {code.name}")
        # Nothing of a refused batch is stored; earlier messages of the same stream were committed on their own.
        expected = [1] if name == "second job in one stream" else []
        assert backend.metric_sequences(job_id) == expected, name
    assert not failures, "\n".join(failures)
    health = health_pb2_grpc.HealthStub(backend.channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "Traceback" not in backend.log_text()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_struct_values_round_trip_in_advanced_config(backend):
    message = spec()
    message.advanced.optimizer = "adamw"
    message.advanced.extra.update({"mosaic": 0.5, "close_mosaic": 2, "nested": {"a": [1, "b", True]}})
    created = backend.jobs().CreateJob(
        jobs_pb2.CreateJobRequest(spec=message, dispatch=False), metadata=auth(backend.internal_token)
    )
    stored = (
        backend.jobs()
        .GetJob(jobs_pb2.GetJobRequest(job_id=created.job.job_id), metadata=auth(backend.internal_token))
        .job.spec
    )
    assert stored == message
    assert isinstance(stored.advanced.extra, struct_pb2.Struct)
