"""SubscribeTelemetry: replay then live, resuming from a cursor, slow subscribers, several backend processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth
from support.streams import metric_messages
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2


class Collector(threading.Thread):
    """Reads a subscription on its own thread and keeps everything it received."""

    def __init__(
        self,
        backend: BackendProcess,
        job_id: str,
        token: str,
        *,
        after=None,
        delay: float = 0.0,
        keep_following: bool = False,
        jobs_stub=None,
    ) -> None:
        super().__init__(daemon=True)
        self.call = (jobs_stub or backend.jobs()).SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, after=after, keep_following=keep_following),
            metadata=auth(token),
            timeout=120,
        )
        self.delay = delay
        self.metric_sequences: list[int] = []
        self.log_sequences: list[int] = []
        self.statuses: list[int] = []
        self.summaries: list[int] = []
        self.lagged = 0
        self.order: list[str] = []
        self.last_cursor = jobs_pb2.TelemetryCursor()
        self.error: Exception | None = None
        self.first_event = threading.Event()

    def run(self) -> None:
        try:
            for event in self.call:
                kind = event.WhichOneof("event")
                self.order.append(kind)
                if kind == "metrics":
                    self.metric_sequences += [p.sequence for p in event.metrics.points]
                elif kind == "logs":
                    self.log_sequences += [r.sequence for r in event.logs.records]
                elif kind == "status_event":
                    self.statuses.append(event.status_event.to_status)
                elif kind == "epoch_summary":
                    self.summaries.append(event.epoch_summary.epoch)
                elif kind == "lagged":
                    self.lagged += 1
                self.last_cursor = event.cursor
                self.first_event.set()
                if self.delay:
                    time.sleep(self.delay)
        except Exception as error:
            self.error = error


def stream(backend: BackendProcess, job_id: str, token: str, first: int, last: int, batch: int = 1000):
    return backend.telemetry().StreamMetrics(metric_messages(job_id, first, last, batch), metadata=auth(token))


def set_status(backend: BackendProcess, job_id: str, token: str, status: int) -> None:
    backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=status), metadata=auth(token)
    )


def test_replay_then_live_until_the_terminal_status(backend):
    job_id, token = backend.create_job()
    stream(backend, job_id, token, 1, 3000)
    logs = telemetry_pb2.StreamLogsRequest(job_id=job_id)
    logs.records.add(level=common_pb2.LOG_LEVEL_INFO, message="Starting training", wall_time=1.0, sequence=1)
    backend.telemetry().StreamLogs(iter([logs]), metadata=auth(token))
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    collector = Collector(backend, job_id, backend.read_token)
    collector.start()
    assert collector.first_event.wait(30)
    stream(backend, job_id, token, 3001, 10_000)  # live, while subscribed
    backend.telemetry().RecordEpochSummary(
        telemetry_pb2.RecordEpochSummaryRequest(
            job_id=job_id, summary=telemetry_pb2.EpochSummary(epoch=0, metrics={"val/accuracy": 0.9})
        ),
        metadata=auth(token),
    )
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    collector.join(60)
    assert not collector.is_alive(), "the subscription must end by itself after the terminal status"
    assert collector.error is None
    assert collector.metric_sequences == list(range(1, 10_001))
    assert collector.log_sequences == [1]
    assert collector.summaries == [0]
    assert collector.statuses == [
        common_pb2.JOB_STATUS_PENDING,
        common_pb2.JOB_STATUS_RUNNING,
        common_pb2.JOB_STATUS_COMPLETED,
    ]
    assert collector.order[-1] == "status_event"  # the terminal status comes after everything before it
    assert collector.last_cursor.metric_sequence == 10_000


def test_resume_from_a_cursor_gets_only_what_follows(backend):
    job_id, token = backend.create_job()
    stream(backend, job_id, token, 1, 2500)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    after = jobs_pb2.TelemetryCursor(metric_sequence=2000, status_sequence=2)
    collector = Collector(backend, job_id, token, after=after)
    collector.start()
    collector.join(30)
    assert collector.metric_sequences == list(range(2001, 2501))
    assert collector.statuses == [common_pb2.JOB_STATUS_COMPLETED]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_subscriber_lags_without_slowing_ingest_or_losing_events(database_url: str, tmp_path: Path):
    backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_SUBSCRIBER_BUFFER_POINTS": "2000"})
    backend.start()
    try:
        job_id, token = backend.create_job()
        set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        # A small, fixed HTTP/2 window (no BDP probing) so the slow reader pushes back on the server quickly.
        narrow = grpc.insecure_channel(backend.address, options=[("grpc.http2.bdp_probe", 0)])
        slow = Collector(backend, job_id, token, delay=0.05, jobs_stub=jobs_pb2_grpc.JobsServiceStub(narrow))
        fast = Collector(backend, job_id, token)
        slow.start()
        fast.start()
        assert slow.first_event.wait(30) and fast.first_event.wait(30)
        total = 60_000
        response = stream(backend, job_id, token, 1, total, batch=500)
        assert response.points_committed == total
        # Ingest finished while the slow subscriber was still far behind: it never waited for it.
        assert len(slow.metric_sequences) < total
        set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
        fast.join(60)
        slow.join(120)
        assert fast.metric_sequences == list(range(1, total + 1))
        assert slow.metric_sequences == list(range(1, total + 1))  # nothing skipped, nothing doubled
        assert slow.lagged >= 1
        assert slow.statuses[-1] == common_pb2.JOB_STATUS_COMPLETED
    finally:
        backend.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_subscriber_on_a_second_backend_sees_what_the_first_ingests(database_url: str, tmp_path: Path):
    first = BackendProcess(database_url, tmp_path / "first")
    first.start()
    second = BackendProcess(database_url, tmp_path / "second", extra_args=["--no-migrate"])
    second.internal_token = first.internal_token
    second.start()
    try:
        job_id, token = first.create_job()
        collector = Collector(second, job_id, token)
        collector.start()
        assert collector.first_event.wait(30)
        set_status(first, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        for start in range(1, 20_001, 5000):
            stream(first, job_id, token, start, start + 4999)
        set_status(first, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
        collector.join(60)
        assert collector.error is None
        assert collector.metric_sequences == list(range(1, 20_001))
        assert collector.statuses == [
            common_pb2.JOB_STATUS_PENDING,
            common_pb2.JOB_STATUS_RUNNING,
            common_pb2.JOB_STATUS_COMPLETED,
        ]
    finally:
        second.close()
        first.close()
