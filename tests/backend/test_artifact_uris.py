"""Artifact URIs reach every reader (the read token's included: the dashboard, `tp show`) without credentials, as
the tracking URI does: a pre-signed URL's signature or a `user:password@` a reporter sent is never stored or served."""

from __future__ import annotations

import grpc
import pytest
from sqlalchemy import text
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/runs/best.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261207%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20261207T000000Z"
    "&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=abcdef0123456789"
)
REPORTED_AND_STORED = [
    (
        PRESIGNED,
        "https://bucket.s3.amazonaws.com/runs/best.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Date=20261207T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host",
    ),
    ("s3://AKIAEXAMPLE:s3cr3t@bucket/runs/last.pt", "s3://bucket/runs/last.pt"),
    ("https://alice:pw@files.example.com/a.pt?token=t&v=1", "https://files.example.com/a.pt?v=1"),
    ("s3://bucket/runs/plain.pt", "s3://bucket/runs/plain.pt"),
    ("file:///data/a@b/best.pt", "file:///data/a@b/best.pt"),
]


def _served(backend: BackendProcess, job_id: str) -> dict[str, str]:
    read = auth(backend.read_token)
    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=read, timeout=10).job
    return {a.name: a.uri for a in job.artifacts}


def test_reported_artifact_uris_are_stored_and_served_without_credentials(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    artifacts = [
        telemetry_pb2.Artifact(name=f"a{index}", uri=reported, size_bytes=1)
        for index, (reported, _) in enumerate(REPORTED_AND_STORED)
    ]
    backend.telemetry().ReportRunInfo(
        telemetry_pb2.ReportRunInfoRequest(job_id=job_id, artifacts=artifacts), metadata=auth(token), timeout=10
    )
    expected = {f"a{index}": stored for index, (_, stored) in enumerate(REPORTED_AND_STORED)}
    assert _served(backend, job_id) == expected
    with backend._engine.connect() as conn:
        rows = conn.execute(
            text("SELECT a.name, a.uri FROM job_artifacts a JOIN jobs j ON j.id = a.job_pk WHERE j.job_id = :j"),
            {"j": job_id},
        ).all()
    assert dict(rows) == expected


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the URI, not the database, is under test
def test_an_artifact_uri_of_credentials_alone_is_refused(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    with pytest.raises(grpc.RpcError) as refused:
        backend.telemetry().ReportRunInfo(
            telemetry_pb2.ReportRunInfoRequest(
                job_id=job_id, artifacts=[telemetry_pb2.Artifact(name="best", uri="alice:s3cr3t@")]
            ),
            metadata=auth(token),
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "best" in refused.value.details() and "s3cr3t" not in refused.value.details()
    assert _served(backend, job_id) == {}


def test_an_artifact_uri_stored_with_credentials_before_is_served_without_them(backend: BackendProcess) -> None:
    job_id, _ = backend.create_job()
    with backend._engine.begin() as conn:
        job_pk = conn.execute(text("SELECT id FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()
        conn.execute(
            text("INSERT INTO job_artifacts (job_pk, name, uri, size_bytes) VALUES (:pk, 'best', :uri, 1)"),
            {"pk": job_pk, "uri": PRESIGNED.replace("https://", "https://alice:pw@")},
        )
    assert _served(backend, job_id) == {"best": REPORTED_AND_STORED[0][1]}
