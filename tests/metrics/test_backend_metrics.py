"""The backend's /metrics (TP_METRICS_PORT) against a real `tp-backend` process: every counter moves by exactly
what a real stream did, the gauges come back to 0, refusals are counted by code, and with
PROMETHEUS_MULTIPROC_DIR the serving process reports what other processes recorded (the `--workers` mode)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth, free_port, metered_backend
from support.metrics import Scrape, scrape, scrape_until
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings

POINTS = "tp_backend_points_committed_total"
MESSAGES = "tp_backend_messages_committed_total"
DUPLICATES = "tp_backend_duplicates_total"
OPEN_STREAMS = "tp_backend_open_streams"
REFUSED = "tp_backend_refused_calls_total"


@pytest.fixture
def metered(database_url: str, tmp_path: Path) -> Iterator[tuple[BackendProcess, int]]:
    """A backend process serving /metrics on a free port."""
    with metered_backend(database_url, tmp_path / "backend-data") as metered:
        yield metered


def delta(after: Scrape, before: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_a_real_stream_moves_the_counters_by_exactly_what_it_committed(
    metered: tuple[BackendProcess, int], tmp_path: Path
) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    before = scrape(port)
    assert before.families[OPEN_STREAMS] == "gauge"
    logger = TrainingLogger(
        job_id,
        backend_address=backend.address,
        token=token,
        spool_dir=tmp_path / "spool",
        settings=LoggerSettings(flush_interval_s=0.02),
    )
    for step in range(1, 251):
        logger.log_metric("train/loss", 1.0 / step, step=step)
    logger.log_message("three")
    logger.log_message("log")
    logger.log_message("records")
    assert logger.flush(timeout=30)
    # The logger's streams stay open until close().
    during = scrape_until(
        port,
        lambda s: s.value(OPEN_STREAMS, stream="metrics") == 1 and s.value(OPEN_STREAMS, stream="logs") == 1,
        what="both streams open",
    )
    assert delta(during, before, POINTS, stream="metrics") == 250
    logger.close(timeout=30)
    after = scrape_until(
        port,
        lambda s: s.value(OPEN_STREAMS, stream="metrics") == 0 and s.value(OPEN_STREAMS, stream="logs") == 0,
        what="the streams closed",
    )
    assert delta(after, before, POINTS, stream="metrics") == 250
    assert delta(after, before, POINTS, stream="logs") == 3
    assert delta(after, before, MESSAGES, stream="metrics") > 0
    assert delta(after, before, MESSAGES, stream="logs") > 0
    assert delta(after, before, DUPLICATES, stream="metrics") == 0
    assert backend.metric_sequences(job_id) == list(range(1, 251))
    # Every round was timed and sized: a round commits one message or more.
    rounds = delta(after, before, "tp_backend_commit_seconds_count")
    messages = delta(after, before, MESSAGES, stream="metrics") + delta(after, before, MESSAGES, stream="logs")
    assert 0 < rounds <= messages
    assert delta(after, before, "tp_backend_commit_rows_count") == rounds
    assert delta(after, before, "tp_backend_commit_rows_sum") == 253


def test_resent_points_count_as_duplicates_and_not_as_committed(metered: tuple[BackendProcess, int]) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    points = [telemetry_pb2.MetricPoint(key="loss", value=1.0, sequence=s, wall_time=time.time()) for s in range(1, 6)]
    stream = backend.telemetry().StreamMetrics

    def send_once() -> telemetry_pb2.StreamMetricsResponse:
        return stream(
            iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=points)]), metadata=auth(token), timeout=10
        )

    before = scrape(port)
    assert send_once().points_committed == 5
    assert send_once().duplicates_ignored == 5
    after = scrape(port)
    assert delta(after, before, POINTS, stream="metrics") == 5
    assert delta(after, before, DUPLICATES, stream="metrics") == 5
    assert delta(after, before, MESSAGES, stream="metrics") == 2
    assert after.value(OPEN_STREAMS, stream="metrics") == 0


def test_refused_calls_are_counted_under_their_code(metered: tuple[BackendProcess, int]) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    before = scrape(port)
    with pytest.raises(grpc.RpcError) as refused:
        backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as denied:
        backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(token), timeout=10)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as invalid:
        backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=""), metadata=auth(backend.internal_token), timeout=10)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(port)
    assert delta(after, before, REFUSED, code="UNAUTHENTICATED") == 1
    assert delta(after, before, REFUSED, code="PERMISSION_DENIED") == 1
    assert delta(after, before, REFUSED, code="INVALID_ARGUMENT") == 1


def test_subscribers_and_jobs_by_status(metered: tuple[BackendProcess, int], tmp_path: Path) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    call = backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(backend.read_token)
    )
    reader = threading.Thread(target=lambda: [None for _ in call], daemon=True)
    reader.start()
    try:
        scrape_until(port, lambda s: s.value("tp_backend_subscribers") == 1, what="one subscriber")
        logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool")
        logger.update_status("RUNNING")
        assert logger.flush(timeout=30)
        # Read from the database every few seconds: the job shows as a running training.
        scrape_until(
            port, lambda s: s.value("tp_backend_jobs", status="RUNNING") == 1, timeout=20, what="one RUNNING job"
        )
        logger.update_status("COMPLETED")
        logger.close(timeout=30)
        reader.join(15)  # the subscription ends after the terminal status
        scraped = scrape_until(
            port,
            lambda s: s.value("tp_backend_subscribers") == 0 and s.value("tp_backend_jobs", status="COMPLETED") == 1,
            timeout=20,
            what="no subscriber, one COMPLETED job",
        )
        assert scraped.value("tp_backend_jobs", status="RUNNING") == 0
    finally:
        call.cancel()


def test_the_metrics_port_is_off_by_default(backend: BackendProcess) -> None:
    assert "metrics on http" not in backend.log_text()


def test_with_a_multiprocess_directory_the_server_reports_every_process(tmp_path: Path) -> None:
    """What `--workers N` relies on: workers record into PROMETHEUS_MULTIPROC_DIR (TP_BACKEND_WORKER=1, never
    serving), the supervisor serves the sum; a gauge of a worker that exited is dropped once it is marked dead."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    worker = textwrap.dedent(
        """
        import os, sys
        from trainingplatform_backend import metrics
        assert not metrics.should_serve(9999)
        metrics.POINTS_COMMITTED.labels("metrics").inc(int(sys.argv[1]))
        metrics.SUBSCRIBERS.inc()
        print(os.getpid())
        """
    )
    pids = [
        subprocess.run(
            [sys.executable, "-c", worker, str(points)],
            env={**env, "TP_BACKEND_WORKER": "1"},
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for points in (7, 11)
    ]
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from trainingplatform_backend import metrics
                metrics.serve_metrics({port}, host="127.0.0.1")
                print("serving", flush=True)
                for line in sys.stdin:
                    metrics.mark_process_dead(int(line))
                    print("marked", flush=True)
                """
            ),
        ],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        assert server.stdout.readline().strip() == "serving"
        scraped = scrape(port)
        assert scraped.value(POINTS, stream="metrics") == 18
        for pid in pids:
            server.stdin.write(f"{pid}\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "marked"
        scraped = scrape(port)
        assert scraped.value(POINTS, stream="metrics") == 18, "counters of exited workers are kept"
        assert scraped.value("tp_backend_subscribers") == 0, "live gauges of exited workers are dropped"
    finally:
        server.kill()
        server.wait(10)
