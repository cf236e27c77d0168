"""A job's logger that starts with a fresh spool while the backend is down (the run restarted on another host, a new
output directory, a cleaned cache) numbers its points from 1 before the backend can say what it already holds. Once
the backend answers, every point numbered before, in memory and in the spool, even in a spool left by an earlier
process, is renumbered after the backend's cursor: none is taken for a duplicate, none is stored twice."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)


def _first_run(backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]) -> tuple[str, str]:
    """A job whose first logger delivered steps 0-99 (sequences 1-100) and set it running."""
    job_id, token = backend.create_job()
    first = open_logger(
        job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "host-a", settings=SETTINGS
    )
    first.update_status("running")
    for step in range(100):
        first.log_metric("loss", float(step), step=step)
    first.log_message("first run")
    assert first.flush(30)
    first.close(30)
    return job_id, token


def _second_run(
    backend: BackendProcess, job_id: str, token: str, spool_dir: Path, open_logger: Callable[..., TrainingLogger]
) -> TrainingLogger:
    """A logger with a fresh spool that spools steps 100-149, a log line and a status while the backend is down."""
    backend.stop()
    second = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS)
    for step in range(100, 150):
        second.log_metric("loss", float(step), step=step)
    second.log_message("second run")
    second.update_status("completed")
    wait_until(lambda: second.stats.spooled == 51, 30, "the second run's points spooled")
    return second


def _assert_delivered_once(backend: BackendProcess, job_id: str) -> None:
    rows = backend.metric_rows(job_id)
    assert [row[0] for row in rows] == list(range(1, 151))
    assert [row[3] for row in rows] == list(range(150))  # step 100 is sequence 101: nothing taken for a duplicate
    assert backend.log_sequences(job_id) == [1, 2]
    assert backend.job_status(job_id) == "COMPLETED"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the spool, not the database, is under test
def test_points_spooled_before_the_backend_answered_are_renumbered_after_its_cursor(
    backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = _first_run(backend, tmp_path, open_logger)
    second = _second_run(backend, job_id, token, tmp_path / "host-b", open_logger)
    backend.restart()
    assert second.flush(30)
    report = second.close(30)
    assert report.committed_metrics == 50 and report.committed_logs == 1
    assert report.duplicates == 0 and report.dropped == 0 and report.calls_delivered == 1
    _assert_delivered_once(backend, job_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fresh_spool_left_while_the_backend_was_down_is_renumbered_by_its_replay(
    backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    # The second run ends before the backend is back; the trainer service replays its spool later.
    job_id, token = _first_run(backend, tmp_path, open_logger)
    spool_dir = tmp_path / "host-b"
    left = _second_run(backend, job_id, token, spool_dir, open_logger).close(0.2)
    assert left.pending_metrics == 50 and left.calls_pending == 1
    backend.restart()
    replay = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS)
    report = replay.close(30)
    assert report.replayed == 51 and report.committed_metrics == 50 and report.committed_logs == 1
    assert report.duplicates == 0 and report.pending_metrics == 0 and report.calls_delivered == 1
    _assert_delivered_once(backend, job_id)
    assert not spool_dir.exists()  # delivered, job ended: removed
