"""After a backend restart the SDK resumes as soon as the channel is connected again, not after a stacked backoff."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

# A reconnect backoff far longer than the waits below: a sender that slept it out would miss them.
SETTINGS = LoggerSettings(reconnect_initial_backoff_s=120.0, reconnect_max_backoff_s=120.0, reconnect_jitter=0.0)


@pytest.mark.timeout(180)
def test_delivery_resumes_once_the_channel_is_ready_again(
    backend: BackendProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    open_logger: Callable[..., TrainingLogger],
) -> None:
    job_id, token = backend.create_job()
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = open_logger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS
        )
        logger.log_metric("train/loss", 0.0, step=0)
        assert logger.flush(30)

        backend.kill()
        logger.log_metric("train/loss", 1.0, step=1)
        wait_until(
            lambda: any("backend unreachable" in r.getMessage() for r in caplog.records),
            30,
            "the logger noticed the outage",
        )
        backend.restart()
        wait_until(lambda: logger.stats.committed_metrics == 2, 30, "the point logged during the outage committed")
        report = logger.close(30)
    assert backend.metric_sequences(job_id) == [1, 2]
    assert report.reconnects == 1 and report.error is None
