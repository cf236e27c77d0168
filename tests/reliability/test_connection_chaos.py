"""Connections between the SDK and the backend reset at random moments: nothing lost, nothing doubled."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.proxy import ChaosProxy
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.clients import JobsClient

from reliability.polling import StatusWatch, wait_until

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
CHUNKS = 20
METRICS_PER_CHUNK = 5_000
LOGS_PER_CHUNK = 150
CHUNKS_PER_EPOCH = 4
PAUSED_CHUNK = 10
# Where in each chunk a log line goes: evenly spread, LOGS_PER_CHUNK of them.
LOG_POSITIONS = frozenset(range(0, METRICS_PER_CHUNK, METRICS_PER_CHUNK // LOGS_PER_CHUNK)[:LOGS_PER_CHUNK])


@pytest.mark.timeout(300)
def test_random_connection_resets_lose_and_double_nothing(
    backend: BackendProcess, tmp_path: Path, rng: random.Random, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = backend.create_job()
    total_metrics, total_logs = CHUNKS * METRICS_PER_CHUNK, CHUNKS * LOGS_PER_CHUNK
    with ChaosProxy(backend.address, seed=rng.randrange(2**32)) as proxy:
        proxy.start_chaos(0.2, 1.5)
        logger = open_logger(job_id, backend_address=proxy.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
        with StatusWatch(backend, job_id, "COMPLETED") as watch:
            logger.update_status("running")
            index = lines = 0
            for chunk in range(CHUNKS):
                epoch = chunk // CHUNKS_PER_EPOCH
                if chunk == PAUSED_CHUNK:
                    # An outage: every connection is reset and reconnects are refused for a while.
                    proxy.pause()
                    proxy.cut_all()
                for point in range(METRICS_PER_CHUNK):
                    logger.log_metric("train/loss", float(index), step=index, epoch=epoch)
                    index += 1
                    if index % 20 == 0:
                        time.sleep(0.002)  # a training loop: the stream lasts long enough for resets mid-flight
                    if point in LOG_POSITIONS:
                        logger.log_message(f"line {lines}", epoch=epoch, step=index)
                        lines += 1
                if chunk == PAUSED_CHUNK:
                    wait_until(lambda: proxy.refused >= 2, 60, "the logger refused twice while paused")
                    proxy.resume()
                if chunk % CHUNKS_PER_EPOCH == CHUNKS_PER_EPOCH - 1:
                    logger.log_epoch_summary(epoch, {"val/accuracy": 0.5 + epoch / 100}, duration_seconds=1.0)
                    # At least one reset per epoch of the stream, however fast either side runs.
                    cuts = proxy.cuts
                    wait_until(lambda n=cuts: proxy.cuts > n, 30, "a random reset")
            logger.update_status("completed")
            report = logger.close(120)
        print(f"{proxy.cuts} cuts, {proxy.connections_cut} connections reset, {proxy.refused} refused; {report}")

    assert backend.metric_sequences(job_id) == list(range(1, total_metrics + 1))
    assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(total_metrics)]
    assert backend.log_sequences(job_id) == list(range(1, total_logs + 1))
    with JobsClient(backend.address, backend.internal_token) as client:
        assert [line.message for line in client.logs(job_id)] == [f"line {i}" for i in range(total_logs)]
        # A subscriber replaying the finished job sees every summary once (resent summaries replace, by epoch).
        events = list(client.subscribe(job_id))
    assert [e.epoch_summary.epoch for e in events if e.kind == "epoch_summary"] == list(
        range(CHUNKS // CHUNKS_PER_EPOCH)
    )
    assert sum(len(e.metrics) for e in events) == total_metrics and sum(len(e.logs) for e in events) == total_logs
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert watch.rows_when_seen == (total_metrics, total_logs)  # COMPLETED only after everything logged before it
    for stream, total in (("metrics", total_metrics), ("logs", total_logs)):
        cursor = backend.cursor_row(job_id, stream)
        assert cursor["committed_count"] == cursor["last_sequence"] == total and cursor["missing_count"] == 0
    assert report.committed_metrics == total_metrics and report.committed_logs == total_logs
    assert report.pending_metrics == report.pending_logs == report.calls_pending == 0
    assert report.calls_delivered == 2 + CHUNKS // CHUNKS_PER_EPOCH and report.calls_failed == 0
    assert report.dropped == 0 and report.error is None
    assert proxy.connections_cut >= CHUNKS // CHUNKS_PER_EPOCH and report.reconnects >= 1
