"""A network stall (connections open, nothing goes through): the sender keeps draining into memory and the spool."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.proxy import ChaosProxy
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

MEMORY_POINTS = 5_000
# A deadline far longer than the stall: a sender that waited for its calls would stay frozen the whole stall.
SETTINGS = LoggerSettings(
    memory_buffer_points=MEMORY_POINTS,
    max_batch_points=1_000,
    rpc_timeout_s=120.0,
    cursor_poll_interval_s=0.1,
    reconnect_initial_backoff_s=0.05,
    reconnect_max_backoff_s=0.5,
)
BEFORE = 1_000
DURING = 30_000


@pytest.mark.timeout(240)
def test_a_stalled_network_does_not_stop_the_drain_into_the_spool(
    backend: BackendProcess, tmp_path: Path, rng: random.Random, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = backend.create_job()
    with ChaosProxy(backend.address, seed=rng.randrange(2**32)) as proxy:
        logger = open_logger(job_id, backend_address=proxy.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
        for index in range(BEFORE):
            logger.log_metric("train/loss", float(index), step=index)
        logger.update_status("running")
        assert logger.flush(60)

        proxy.stall()
        for index in range(BEFORE, BEFORE + DURING):
            logger.log_metric("train/loss", float(index), step=index)
            if index % 500 == 0:
                time.sleep(0.02)  # a training loop: the stall lasts through many of the sender's ticks
        # Everything logged is taken from the caller's buffer and, past the memory bound, written to the spool,
        # while the calls and streams to the backend hang.
        wait_until(
            lambda: logger.stats.logged_metrics == BEFORE + DURING and logger.stats.spooled >= DURING - MEMORY_POINTS,
            30,
            "the stalled sender drained the buffer into the spool",
        )
        stalled = logger.stats
        assert stalled.pending_metrics >= DURING - MEMORY_POINTS
        assert len(backend.metric_sequences(job_id)) < BEFORE + DURING

        proxy.unstall()
        logger.update_status("completed")
        assert logger.flush(120)
        report = logger.close(60)
    print(f"during the stall: {stalled}; at close: {report}")

    total = BEFORE + DURING
    assert backend.metric_sequences(job_id) == list(range(1, total + 1))  # each exactly once
    assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(total)]
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert report.committed_metrics == total and report.pending_metrics == 0
    assert report.error is None and report.dropped == 0 and report.calls_failed == 0
