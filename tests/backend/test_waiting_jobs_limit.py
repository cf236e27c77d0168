"""TP_MAX_WAITING_JOBS: how many jobs may wait to start (PENDING or QUEUED) at once. Before it, one front-end token
could create jobs without end; past it CreateJob is RESOURCE_EXHAUSTED with a message naming the setting, nothing
is stored, a retry of an existing request still gets its job, and a job that starts or ends frees its place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

LIMIT = 3


@pytest.fixture
def limited(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    process = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_MAX_WAITING_JOBS": str(LIMIT)})
    process.start()
    try:
        yield process
    finally:
        process.close()


def _create(backend: BackendProcess, request_id: str = "") -> jobs_pb2.CreateJobResponse:
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    return backend.jobs().CreateJob(
        jobs_pb2.CreateJobRequest(spec=spec, dispatch=False, request_id=request_id),
        metadata=auth(backend.internal_token),
        timeout=10,
    )


def _job_count(backend: BackendProcess) -> int:
    return len(backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(backend.internal_token)).jobs)


def test_past_the_limit_create_job_is_refused_until_a_waiting_job_starts_or_ends(limited: BackendProcess) -> None:
    first = _create(limited, request_id="first")
    second = _create(limited)
    _create(limited)

    with pytest.raises(grpc.RpcError) as caught:
        _create(limited)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "TP_MAX_WAITING_JOBS" in caught.value.details() and "3" in caught.value.details(), caught.value.details()
    assert _job_count(limited) == LIMIT, "nothing is stored for a refused CreateJob"

    retried = _create(limited, request_id="first")
    assert retried.job.job_id == first.job.job_id, "a retry of a stored request is not a new job"

    limited.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=first.job.job_id, status=common_pb2.JOB_STATUS_RUNNING),
        metadata=auth(first.telemetry_token),
        timeout=10,
    )
    _create(limited)  # a started job waits no more
    limited.jobs().CancelJob(
        jobs_pb2.CancelJobRequest(job_id=second.job.job_id), metadata=auth(limited.internal_token), timeout=10
    )
    _create(limited)  # nor does an ended one
    with pytest.raises(grpc.RpcError) as again:
        _create(limited)
    assert again.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _job_count(limited) == LIMIT + 2
