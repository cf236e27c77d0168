"""SIGTERM to the backend under load: everything received is committed, the exit code is 0, clients resume."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import BackendProcess, auth
from support.streams import metric_messages
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
JOBS = 4
POINTS_PER_JOB = 50_000


def _assert_stored_prefix(backend: BackendProcess, job_id: str) -> int:
    """The job's stored metrics are exactly 1..cursor: no batch half-stored, none skipped. Returns the cursor."""
    cursor = backend.cursor_row(job_id, "metrics")
    assert backend.metric_sequences(job_id) == list(range(1, cursor["last_sequence"] + 1))
    assert cursor["committed_count"] == cursor["last_sequence"] and cursor["missing_count"] == 0
    return cursor["last_sequence"]


@pytest.mark.timeout(300)
def test_sigterm_under_load_from_four_trainers_loses_and_doubles_nothing(
    backend: BackendProcess, tmp_path: Path, rng: random.Random, open_logger: Callable[..., TrainingLogger]
) -> None:
    jobs = [backend.create_job() for _ in range(JOBS)]
    loggers = [
        open_logger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / job_id, settings=SETTINGS
        )
        for job_id, token in jobs
    ]
    # The trainers stop half-way until SIGTERM is sent, so they are all still streaming when it arrives.
    sigterm_sent = threading.Event()
    committed_before = rng.randint(2_000, POINTS_PER_JOB // 2 - 10_000)
    print(f"SIGTERM once every job has {committed_before} points committed")

    def train(logger: TrainingLogger, job: int) -> None:
        for index in range(POINTS_PER_JOB):
            if index == POINTS_PER_JOB // 2:
                sigterm_sent.wait(120)
            logger.log_metric("train/loss", float(job * POINTS_PER_JOB + index), step=index)
            if index % 25 == 0:
                time.sleep(0.001)  # a training loop, not a tight loop

    trainers = [
        threading.Thread(target=train, args=(logger, job), name=f"trainer-{job}") for job, logger in enumerate(loggers)
    ]
    for trainer in trainers:
        trainer.start()
    try:
        wait_until(
            lambda: all(logger.stats.committed_metrics >= committed_before for logger in loggers),
            120,
            f"{committed_before} points committed for every job",
        )
        backend.process.send_signal(signal.SIGTERM)
        sigterm_sent.set()
        exit_code = backend.process.wait(60)
        assert exit_code == 0, backend.log_text()[-3000:]
        # What the backend received before it stopped is stored whole and in order.
        at_shutdown = [_assert_stored_prefix(backend, job_id) for job_id, _ in jobs]
        print(f"stored when the backend exited: {at_shutdown}")
        backend.restart()
    finally:
        sigterm_sent.set()
        for trainer in trainers:
            trainer.join(120)
    reports = [logger.close(120) for logger in loggers]

    for job, ((job_id, _), report) in enumerate(zip(jobs, reports, strict=True)):
        assert backend.metric_sequences(job_id) == list(range(1, POINTS_PER_JOB + 1))
        values = [row[2] for row in backend.metric_rows(job_id)]
        assert values == [float(job * POINTS_PER_JOB + i) for i in range(POINTS_PER_JOB)]
        cursor = backend.cursor_row(job_id, "metrics")
        assert report.logged_metrics == report.committed_metrics == cursor["committed_count"] == POINTS_PER_JOB
        assert report.pending_metrics == 0 and report.dropped == 0 and report.error is None
        assert report.reconnects >= 1  # each logger lost its stream at the shutdown and resumed from the cursor


@pytest.mark.timeout(120)
def test_sigterm_commits_a_stream_that_keeps_arriving_and_ends_it_normally(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    total, batch = 200_000, 2_500
    gate_after = 10  # messages sent before SIGTERM; the rest arrive while the backend shuts down
    sigterm_sent = threading.Event()

    def requests() -> Iterator[telemetry_pb2.StreamMetricsRequest]:
        for index, message in enumerate(metric_messages(job_id, 1, total, batch)):
            if index == gate_after:
                sigterm_sent.wait(60)
            yield message

    call = backend.telemetry().StreamMetrics.future(requests(), metadata=auth(token), timeout=60)
    try:
        wait_until(
            lambda: backend.cursor_row(job_id)["last_sequence"] == gate_after * batch,
            60,
            "the messages before the gate committed",
        )
        backend.process.send_signal(signal.SIGTERM)
    finally:
        sigterm_sent.set()
    exit_code = backend.process.wait(60)
    response = call.result(60)

    assert exit_code == 0, backend.log_text()[-3000:]
    # The client half-closed before going quiet: the call ends normally, with everything committed.
    assert response.points_committed == response.last_committed_sequence == total
    assert response.duplicates_ignored == 0 and response.missing_sequences == 0
    assert backend.metric_sequences(job_id) == list(range(1, total + 1))


def _serving(backend: BackendProcess) -> bool:
    try:
        response = health_pb2_grpc.HealthStub(backend.channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
    except grpc.RpcError:
        return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(120)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the servicer's code, not the database's
def test_a_stream_cancelled_during_the_shutdown_drain_leaves_no_unhandled_error(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    stop = threading.Event()

    def trickle() -> Iterator[telemetry_pb2.StreamMetricsRequest]:
        sequence = 0
        while not stop.is_set():
            sequence += 1
            yield from metric_messages(job_id, sequence, sequence)
            stop.wait(0.05)  # a slow trainer: never quiet for the drain's 0.5 s

    call = backend.telemetry().StreamMetrics.future(trickle(), metadata=auth(token), timeout=60)
    try:
        wait_until(lambda: backend.cursor_row(job_id)["last_sequence"] > 0, 60, "the first point committed")
        backend.process.send_signal(signal.SIGTERM)
        wait_until(lambda: not _serving(backend), 30, "the backend shutting down")
        # The trainer goes away while the backend drains its stream (a client cancel, as on a broken connection).
        call.cancel()
    finally:
        stop.set()
    assert backend.process.wait(60) == 0
    errors = [line for line in backend.log_text().splitlines() if " ERROR " in line]
    assert errors == [], backend.log_text()[-3000:]
