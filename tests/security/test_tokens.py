"""Split tokens: the front-end token creates, cancels and reads jobs but writes no telemetry and starts no training;
a job's tokens stop writing TP_JOB_TOKEN_GRACE_S after the job ended, and keep reading."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth
from support.tp import TP, shell_env
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, spec
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform.trainer.v1 import trainer_pb2
from trainingplatform_backend.auth import JobTokenWindow, Kind, Principal, derive_job_token
from trainingplatform_sdk.clients import JobsClient, default_token
from trainingplatform_sdk.errors import PermissionDeniedError, UnauthenticatedError

DENIED = grpc.StatusCode.PERMISSION_DENIED
SPEC = spec(epochs=1)


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _point(sequence: int) -> telemetry_pb2.MetricPoint:
    return telemetry_pb2.MetricPoint(key="loss", value=1.0 / sequence, wall_time=time.time(), sequence=sequence)


@pytest.fixture
def db_backend(tmp_path: Path, database_url: str) -> Iterator[BackendProcess]:
    """A backend whose front-end token is generated into its data directory (FRONTEND_AUTH_TOKEN unset)."""
    process = BackendProcess(database_url, tmp_path / "data", extra_env={"FRONTEND_AUTH_TOKEN": ""})
    process.start()
    yield process
    process.close()


def test_the_front_end_token_creates_cancels_and_reads_but_writes_no_telemetry(
    db_backend: BackendProcess, tmp_path: Path
):
    backend = db_backend
    path = backend.data_dir / "frontend_auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token and token not in (backend.internal_token, backend.read_token)
    jobs, telemetry, metadata = backend.jobs(), backend.telemetry(), auth(token)

    created = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC, dispatch=False), metadata=metadata, timeout=10)
    job_id = created.job.job_id
    assert created.telemetry_token
    assert jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata).job.job_id == job_id
    assert job_id in [job.job_id for job in jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata).jobs]
    jobs.ListMetrics(jobs_pb2.ListMetricsRequest(job_id=job_id), metadata=metadata)
    jobs.ListLogs(jobs_pb2.ListLogsRequest(job_id=job_id), metadata=metadata)
    first = next(
        iter(jobs.SubscribeTelemetry(jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=metadata, timeout=10))
    )
    assert first is not None

    # No telemetry writes (nor reads of the telemetry service): those are the job's and the internal token's.
    write = telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[_point(1)])
    assert _code(lambda: telemetry.StreamMetrics(iter([write]), metadata=metadata)) == DENIED
    running = telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING)
    assert _code(lambda: telemetry.UpdateStatus(running, metadata=metadata)) == DENIED
    cursor = telemetry_pb2.GetStreamCursorRequest(job_id=job_id)
    assert _code(lambda: telemetry.GetStreamCursor(cursor, metadata=metadata)) == DENIED
    assert backend.job_status(job_id) == "PENDING"

    cancelled = jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=metadata)
    assert cancelled.job.status == common_pb2.JOB_STATUS_CANCELLED

    # `tp` and JobsClient find the front-end token in the backend's data directory.
    with pytest.MonkeyPatch.context() as env:
        for name in ("TP_AUTH_TOKEN", "INTERNAL_AUTH_TOKEN", "TP_DATA_DIR"):
            env.delenv(name, raising=False)
        assert default_token(backend.data_dir) == token
        env.setenv("TP_AUTH_TOKEN", "explicit")
        assert default_token(backend.data_dir) == "explicit"
        env.delenv("TP_AUTH_TOKEN")
        env.setenv("INTERNAL_AUTH_TOKEN", "compatible")
        assert default_token(backend.data_dir) == "compatible"
        env.delenv("INTERNAL_AUTH_TOKEN")
        other = tmp_path / "other"
        other.mkdir()
        with pytest.raises(UnauthenticatedError, match="TP_AUTH_TOKEN"):
            default_token(other)
        (other / "internal_auth_token").write_text("internal-from-file\n")
        assert default_token(other) == "internal-from-file"  # compatibility with an older backend
        (other / "frontend_auth_token").write_text("frontend-from-file\n")
        assert default_token(other) == "frontend-from-file"
    with JobsClient(backend.address, token) as client:
        assert client.get_job(job_id).status == "CANCELLED"
    # `tp` with nothing but the backend's data directory uses the front-end token it finds there.
    env = shell_env(
        TP_BACKEND_ADDRESS=backend.address,
        TP_DATA_DIR=str(backend.data_dir),
        TP_CONFIG=str(tmp_path / "no-config.json"),
    )
    shown = subprocess.run([TP, "show", job_id], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "CANCELLED" in shown.stdout


def test_a_trainer_refuses_the_front_end_token(tmp_path: Path):
    """Trainers trust only the internal token: a front end cannot start training by itself."""
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER})
    trainer.start()
    backend = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "data",
        extra_env={"TP_TRAINERS": f"timm={trainer.address}", "FRONTEND_AUTH_TOKEN": "front-end-token-0123456789"},
    )
    backend.internal_token = trainer.token
    backend.start()
    try:
        request = trainer_pb2.StartTrainingRequest(job_id="job-x", spec=SPEC, telemetry_endpoint=backend.address)
        with pytest.raises(grpc.RpcError) as refused:
            trainer.stub.StartTraining(request, metadata=auth("front-end-token-0123456789"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            trainer.stub.ListTrainings(trainer_pb2.ListTrainingsRequest(), metadata=auth("front-end-token-0123456789"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert trainer.list_all() == []
    finally:
        backend.close()
        trainer.close()


def test_a_job_token_stops_writing_after_its_job_ended_plus_the_grace(tmp_path: Path, database_url: str):
    backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_JOB_TOKEN_GRACE_S": "1"})
    backend.start()
    try:
        telemetry, jobs = backend.telemetry(), backend.jobs()
        job_id, job_token = backend.create_job()
        attempt_token = derive_job_token(backend.internal_token, job_id, 1)[0]
        tokens = {"job": auth(job_token), "attempt": auth(attempt_token)}
        sequences = iter(range(1, 1000))

        def writes(metadata) -> dict[str, Callable[[], object]]:
            return {
                "StreamMetrics": lambda: telemetry.StreamMetrics(
                    iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[_point(next(sequences))])]),
                    metadata=metadata,
                ),
                "StreamLogs": lambda: telemetry.StreamLogs(
                    iter(
                        [
                            telemetry_pb2.StreamLogsRequest(
                                job_id=job_id,
                                records=[
                                    telemetry_pb2.LogRecord(
                                        level=common_pb2.LOG_LEVEL_INFO,
                                        message="m",
                                        wall_time=time.time(),
                                        sequence=next(sequences),
                                    )
                                ],
                            )
                        ]
                    ),
                    metadata=metadata,
                ),
                "UpdateStatus": lambda: telemetry.UpdateStatus(
                    telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_COMPLETED),
                    metadata=metadata,
                ),
                "RecordEpochSummary": lambda: telemetry.RecordEpochSummary(
                    telemetry_pb2.RecordEpochSummaryRequest(
                        job_id=job_id, summary=telemetry_pb2.EpochSummary(epoch=0, metrics={"a": 1.0})
                    ),
                    metadata=metadata,
                ),
                "ReportRunInfo": lambda: telemetry.ReportRunInfo(
                    telemetry_pb2.ReportRunInfoRequest(job_id=job_id, mlflow_run_id="r"), metadata=metadata
                ),
            }

        def reads(metadata) -> dict[str, Callable[[], object]]:
            return {
                "GetStreamCursor": lambda: telemetry.GetStreamCursor(
                    telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=metadata
                ),
                "GetJob": lambda: jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata),
                "ListMetrics": lambda: jobs.ListMetrics(jobs_pb2.ListMetricsRequest(job_id=job_id), metadata=metadata),
                "ListLogs": lambda: jobs.ListLogs(jobs_pb2.ListLogsRequest(job_id=job_id), metadata=metadata),
                "SubscribeTelemetry": lambda: list(
                    jobs.SubscribeTelemetry(
                        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=metadata, timeout=10
                    )
                ),
            }

        running = telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING)
        telemetry.UpdateStatus(running, metadata=tokens["job"])
        for name, metadata in tokens.items():
            for rpc, call in writes(metadata).items():
                if rpc != "UpdateStatus":
                    assert _code(call) == grpc.StatusCode.OK, (name, rpc)

        # A stream opened while the job runs, which keeps writing past the end and the grace.
        proceed = threading.Event()

        def long_stream() -> Iterator[telemetry_pb2.StreamMetricsRequest]:
            yield telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[_point(500)])
            proceed.wait(30)
            yield telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[_point(501)])

        stream = telemetry.StreamMetrics.future(long_stream(), metadata=tokens["attempt"], timeout=60)
        deadline = time.monotonic() + 10
        while 500 not in backend.metric_sequences(job_id):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        # The job ends; within the grace its tokens still write (a spool replay).
        assert writes(tokens["job"])["UpdateStatus"]() is not None
        assert backend.job_status(job_id) == "COMPLETED"
        for name, metadata in tokens.items():
            assert _code(writes(metadata)["StreamMetrics"]) == grpc.StatusCode.OK, name

        time.sleep(2.5)  # past the end + 1 s of grace, and past the 1 s between reads of a running job's end
        for name, metadata in tokens.items():
            for rpc, call in writes(metadata).items():
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                assert refused.value.code() == DENIED, (name, rpc)
                assert re.fullmatch(
                    rf"job {job_id} ended at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ; its token stopped writing 1 s later",
                    refused.value.details(),
                ), refused.value.details()
        # The stream opened before the end is refused at its next message. (Checked before the reads below subscribe
        # to the job: a job's first subscriber ends its open streams with OK, and the client would resume from the
        # cursor, its writes refused as above.)
        proceed.set()
        with pytest.raises(grpc.RpcError) as refused:
            stream.result(timeout=30)
        assert refused.value.code() == DENIED
        assert 501 not in backend.metric_sequences(job_id)
        for name, metadata in tokens.items():
            for rpc, call in reads(metadata).items():
                assert _code(call) == grpc.StatusCode.OK, (name, rpc)

        # The internal token is unaffected: late telemetry is still accepted from it.
        internal = auth(backend.internal_token)
        assert _code(writes(internal)["StreamMetrics"]) == grpc.StatusCode.OK
        assert _code(writes(internal)["RecordEpochSummary"]) == grpc.StatusCode.OK
    finally:
        backend.close()


def test_the_write_window_reads_a_job_end_once_per_grace_not_per_message():
    reads: list[str] = []
    ended: dict[str, dt.datetime | None] = {"running": None, "ended": dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)}

    def lookup(job_id: str) -> dt.datetime | None:
        reads.append(job_id)
        return ended[job_id]

    window = JobTokenWindow(3600, lookup)
    job = Principal(Kind.JOB, "running")

    async def scenario() -> None:
        for _ in range(1000):  # a stream's messages: one read, then memory
            await window.check_write("running", job)
        assert reads == ["running"]
        for _ in range(3):  # an ended job: refused from memory after one read
            with pytest.raises(PermissionDeniedError, match="its token stopped writing 3600 s later"):
                await window.check_write("ended", Principal(Kind.JOB, "ended", 2))
        assert reads == ["running", "ended"]
        await window.check_write("ended", Principal(Kind.INTERNAL))  # the internal token is never refused
        assert reads == ["running", "ended"]

    asyncio.run(scenario())
