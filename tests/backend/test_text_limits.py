"""Every text a call may send at its documented limit (the proto comments, `trainingplatform_sdk.spec.limits`) is
stored whole and read back, on SQLite and on PostgreSQL, whose VARCHAR columns refuse what does not fit (SQLite
ignores the declared length, so only PostgreSQL shows a column narrower than its limit)."""

from __future__ import annotations

from support.backend import BackendProcess, auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.spec import limits


def _longest(prefix: str, length: int) -> str:
    return prefix + "é" * (length - len(prefix))  # multi-byte: a limit counts characters, not bytes


def test_run_info_at_its_limits_is_stored_whole(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING),
        metadata=auth(token),
        timeout=10,
    )
    tracking_uri = _longest("http://mlflow.example/", limits.MAX_URI_CHARS)  # 1,001+ characters failed INTERNAL
    run_id = _longest("run-", limits.MAX_NAME_CHARS)
    artifact = telemetry_pb2.Artifact(
        name=_longest("best-", limits.MAX_NAME_CHARS),
        uri=_longest("s3://bucket/", limits.MAX_URI_CHARS),
        size_bytes=1,
    )
    backend.telemetry().ReportRunInfo(
        telemetry_pb2.ReportRunInfoRequest(
            job_id=job_id, mlflow_run_id=run_id, mlflow_tracking_uri=tracking_uri, artifacts=[artifact]
        ),
        metadata=auth(token),
        timeout=10,
    )
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.internal_token)).job
    assert job.mlflow_tracking_uri == tracking_uri
    assert job.mlflow_run_id == run_id
    assert [(a.name, a.uri) for a in job.artifacts] == [(artifact.name, artifact.uri)]
