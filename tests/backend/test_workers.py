"""`tp-backend --workers N`: worker processes sharing one port on PostgreSQL, one job's streams on any worker,
exactly-once and the cursor across them, subscriptions that see every worker, restarts, the port kept to one
backend, and SQLite refused."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import VENV_BIN, auth, free_port, postgres_database
from support.fake_trainer import FakeTrainer
from support.streams import metric_messages
from support.workers import Notifications, WorkersBackend, separate_channel
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

POINTS_PER_STREAM = 1000


class Subscriber(threading.Thread):
    """One SubscribeTelemetry call read on its own thread (on its own connection, so on any worker)."""

    def __init__(self, address: str, job_id: str, token: str) -> None:
        super().__init__(daemon=True)
        self.channel = separate_channel(address)
        self.call = jobs_pb2_grpc.JobsServiceStub(self.channel).SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token), timeout=120
        )
        self.metric_sequences: list[int] = []
        self.statuses: list[int] = []
        self.started = threading.Event()
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for event in self.call:
                kind = event.WhichOneof("event")
                if kind == "metrics":
                    self.metric_sequences += [p.sequence for p in event.metrics.points]
                elif kind == "status_event":
                    self.statuses.append(event.status_event.to_status)
                self.started.set()
        except Exception as error:
            self.error = error
        finally:
            self.channel.close()


def telemetry(channel: grpc.Channel) -> telemetry_pb2_grpc.TrainingTelemetryServiceStub:
    return telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)


def set_status(channel: grpc.Channel, job_id: str, token: str, status: int) -> None:
    telemetry(channel).UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=status), metadata=auth(token), timeout=10
    )


def process_gone(pid: int) -> bool:
    """Whether the process has exited (a zombie left to a parent that died counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        time.sleep(0.05)


@pytest.fixture
def pg_url():  # type: ignore[no-untyped-def]
    with postgres_database() as url:
        yield url


@pytest.mark.timeout(180)
def test_one_jobs_streams_land_on_both_workers_stored_once_and_a_subscriber_sees_them_all(
    pg_url: str, tmp_path: Path
) -> None:
    notifications = Notifications(pg_url)
    notifications.start()
    backend = WorkersBackend(pg_url, tmp_path / "data", workers=2)
    backend.start()
    try:
        workers = backend.serving_workers()
        assert sorted(workers) == [0, 1]
        instances = {instance for _, instance in workers.values()}
        # The migrations ran once, in the supervisor, before the workers started.
        assert backend.log_text().count("applying database migrations") == 1

        job_id, token = backend.create_job()
        pk = backend.job_pk(job_id)
        subscriber = Subscriber(backend.address, job_id, token)
        subscriber.start()
        assert subscriber.started.wait(30)  # PENDING: the subscription is live
        set_status(backend.channel, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        # CreateJob and UpdateStatus notify too (from the worker that served them): streams count from here.
        wait_for(lambda: notifications.instances(pk), 10, "the status change's notification")
        time.sleep(0.3)
        since = time.monotonic()

        # One stream after another, each on a connection of its own, until both workers have committed for the job.
        streams = 0
        while streams < 8 or notifications.instances(pk, since) != instances:
            assert streams < 40, f"every stream landed on one worker: {notifications.instances(pk, since)}"
            first = streams * POINTS_PER_STREAM + 1
            with separate_channel(backend.address) as channel:
                response = telemetry(channel).StreamMetrics(
                    metric_messages(job_id, first, first + POINTS_PER_STREAM - 1, 250), metadata=auth(token), timeout=30
                )
            assert response.points_committed == POINTS_PER_STREAM
            assert response.last_committed_sequence == first + POINTS_PER_STREAM - 1
            streams += 1
        total = streams * POINTS_PER_STREAM

        # Resends through other connections (so other workers too) are duplicates, whichever worker reads them.
        for _ in range(4):
            with separate_channel(backend.address) as channel:
                response = telemetry(channel).StreamMetrics(
                    metric_messages(job_id, 1, 2 * POINTS_PER_STREAM, 500), metadata=auth(token), timeout=30
                )
                assert response.points_committed == 0
                assert response.duplicates_ignored == 2 * POINTS_PER_STREAM
                # Every worker answers the same cursor: the highest committed sequence.
                cursor = telemetry(channel).GetStreamCursor(
                    telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=auth(token), timeout=10
                )
                assert cursor.last_metric_sequence == total
        set_status(backend.channel, job_id, token, common_pb2.JOB_STATUS_COMPLETED)

        subscriber.join(60)
        assert subscriber.error is None, subscriber.error
        assert subscriber.metric_sequences == list(range(1, total + 1))
        assert subscriber.statuses == [
            common_pb2.JOB_STATUS_PENDING,
            common_pb2.JOB_STATUS_RUNNING,
            common_pb2.JOB_STATUS_COMPLETED,
        ]
        assert backend.metric_sequences(job_id) == list(range(1, total + 1))
        cursor_row = backend.cursor_row(job_id, "metrics")
        assert cursor_row["committed_count"] == total and cursor_row["duplicate_count"] == 4 * 2 * POINTS_PER_STREAM

        # SIGTERM: every worker drains and stops, the supervisor exits 0.
        assert backend.stop() == 0
        assert all(process_gone(pid) for pid, _ in workers.values())
        assert "stopping 2 workers" in backend.log_text()
    finally:
        backend.close()
        notifications.close()


@pytest.mark.timeout(180)
def test_a_killed_worker_is_restarted_and_the_port_stays_one_backends(pg_url: str, tmp_path: Path) -> None:
    backend = WorkersBackend(pg_url, tmp_path / "data", workers=2)
    backend.start()
    try:
        before = backend.serving_workers()
        killed = backend.kill_worker(0)
        backend.wait_log(f"worker 0 (pid {killed}) was killed by SIGKILL", 10)
        # The other worker serves meanwhile: every new connection gets an answer.
        for _ in range(10):
            with separate_channel(backend.address) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: backend.serving_workers()[0][0] != killed, 30, "worker 0 restarted")
        after = backend.serving_workers()
        assert after[1] == before[1]
        assert "restarting it in" in backend.log_text()

        # Both serve: streams on fresh connections are all stored.
        job_id, token = backend.create_job()
        for index in range(6):
            first = index * POINTS_PER_STREAM + 1
            with separate_channel(backend.address) as channel:
                telemetry(channel).StreamMetrics(
                    metric_messages(job_id, first, first + POINTS_PER_STREAM - 1), metadata=auth(token), timeout=30
                )
        assert backend.metric_sequences(job_id) == list(range(1, 6 * POINTS_PER_STREAM + 1))

        # The port is this backend's: a second supervisor and a one-process backend are refused, in one line.
        env = {**os.environ, "DATABASE_URL": pg_url, "TP_DATA_DIR": str(tmp_path / "other")}
        for extra in (["--workers", "2"], []):
            result = subprocess.run(
                [str(VENV_BIN / "tp-backend"), "--listen", backend.address, *extra],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 1, result.stderr
            errors = [line for line in result.stderr.splitlines() if "cannot start" in line]
            assert len(errors) == 1 and backend.address in errors[0], result.stderr

        # The workers die with the supervisor, however it dies.
        pids = [pid for pid, _ in backend.serving_workers().values()]
        assert backend.process is not None
        os.kill(backend.process.pid, signal.SIGKILL)
        backend.process.wait(10)
        wait_for(lambda: all(process_gone(pid) for pid in pids), 30, "the workers exit after their supervisor")
    finally:
        backend.close()


@pytest.mark.timeout(120)
def test_each_queued_job_is_dispatched_by_one_worker_once(pg_url: str, tmp_path: Path) -> None:
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    with FakeTrainer(accept_delay_s=0.1) as trainer:
        backend = WorkersBackend(
            pg_url, tmp_path / "data", workers=2, extra_env={"TP_TRAINERS": f"timm={trainer.address}"}
        )
        backend.start()
        try:
            job_ids = []
            for _ in range(12):  # each CreateJob on a connection of its own: either worker stores and wakes
                with separate_channel(backend.address) as channel:
                    response = jobs_pb2_grpc.JobsServiceStub(channel).CreateJob(
                        jobs_pb2.CreateJobRequest(spec=spec), metadata=auth(backend.internal_token), timeout=30
                    )
                job_ids.append(response.job.job_id)
            wait_for(lambda: trainer.calls.get("StartTraining", 0) >= len(job_ids), 60, "every job dispatched")
            time.sleep(2)  # several dispatch rounds of both workers
            assert trainer.calls["StartTraining"] == len(job_ids)
            assert all(len(trainer.runs_of(job_id)) == 1 for job_id in job_ids)
        finally:
            backend.close()


@pytest.mark.timeout(120)
def test_the_supervisor_alone_serves_every_workers_metrics(pg_url: str, tmp_path: Path) -> None:
    pytest.importorskip("trainingplatform_backend.metrics")
    metrics_port = free_port()
    backend = WorkersBackend(pg_url, tmp_path / "data", workers=2, extra_args=["--metrics-port", str(metrics_port)])
    backend.start()
    try:
        job_id, token = backend.create_job()
        for index in range(6):
            first = index * POINTS_PER_STREAM + 1
            with separate_channel(backend.address) as channel:
                telemetry(channel).StreamMetrics(
                    metric_messages(job_id, first, first + POINTS_PER_STREAM - 1), metadata=auth(token), timeout=30
                )

        def committed() -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith('tp_backend_points_committed_total{stream="metrics"}'):
                        return float(line.split()[-1])
            return 0.0

        assert committed() == 6 * POINTS_PER_STREAM  # the sum over both workers
        backend.kill_worker(1)  # a dead worker's counters still count
        backend.wait_log("worker 1 restarted", 30)
        assert committed() == 6 * POINTS_PER_STREAM
    finally:
        backend.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_sqlite_with_several_workers_is_refused_in_one_line(tmp_path: Path, how: str) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'backend.db'}",
        "TP_DATA_DIR": str(tmp_path),
    }
    args = [str(VENV_BIN / "tp-backend"), "--listen", f"127.0.0.1:{free_port()}"]
    if how == "flag":
        args += ["--workers", "2"]
    else:
        env["TP_BACKEND_WORKERS"] = "2"
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "needs PostgreSQL" in lines[0] and "DATABASE_URL" in lines[0] and "--workers 1" in lines[0]
    assert not (tmp_path / "backend.db").exists()  # refused before touching the database
