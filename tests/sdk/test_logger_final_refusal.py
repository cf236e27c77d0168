"""TrainingLogger against a real backend that refuses its token for good mid-stream: the job ended (cancelled) and
its token stopped writing. The delivery report (and the spool) must count as pending exactly what the backend does
not hold: what it committed before the refusal is delivered, even though the sender had not read the cursor since.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger

# The committed cursor is read only at connect (and at close): whatever the backend commits later is not yet
# known to the sender when the refusal comes.
SETTINGS = LoggerSettings(
    cursor_poll_interval_s=3600.0,
    unwatched_cursor_poll_interval_s=3600.0,
    unwatched_flush_interval_s=0.05,
)


@pytest.fixture
def backend(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    """A backend whose job tokens stop writing as soon as their job ended (no grace)."""
    process = BackendProcess(database_url, tmp_path / "backend-data", extra_env={"TP_JOB_TOKEN_GRACE_S": "0"})
    process.start()
    try:
        yield process
    finally:
        process.close()


def test_what_was_committed_before_a_final_refusal_is_not_reported_pending(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    spool = tmp_path / "spool"
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=spool, settings=SETTINGS)
    for step in range(100):
        logger.log_metric("train/loss", 1.0 / (step + 1), step=step)
    for line in range(20):
        logger.log_message(f"line {line}")
    wait_until(
        lambda: len(backend.metric_sequences(job_id)) == 100 and len(backend.log_sequences(job_id)) == 20,
        30,
        "the points and records committed",
    )
    assert logger.stats.committed_metrics == 0  # the sender has not read the cursor since it connected

    backend.jobs().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=auth(backend.internal_token))
    step = 100

    def refused() -> bool:
        # The trainer logs on; the backend takes its points until it reads that the job ended, then refuses them.
        nonlocal step
        logger.log_metric("train/loss", 0.0, step=step)
        step += 1
        return logger.stats.error is not None

    wait_until(refused, 30, "the token refused", interval=0.05)
    report = logger.close(5)

    assert report.error is not None and "PERMISSION_DENIED" in report.error
    delivered_metrics, delivered_logs = len(backend.metric_sequences(job_id)), len(backend.log_sequences(job_id))
    assert delivered_metrics >= 100 and delivered_logs == 20
    assert report.logged_metrics == step and report.logged_logs == 20
    assert (report.committed_metrics, report.committed_logs) == (delivered_metrics, delivered_logs)
    assert (report.pending_metrics, report.pending_logs) == (step - delivered_metrics, 0)
    assert report.pending_metrics >= 1 and report.dropped == 0

    # The spool keeps exactly what was not delivered, for a later replay.
    again = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=spool, settings=SETTINGS)
    try:
        assert again.stats.replayed == report.pending_metrics
    finally:
        again.close(1)
