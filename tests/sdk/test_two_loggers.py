"""Two TrainingLoggers of one job at once (the script started twice with the same job): both number the job's
points after the same cursor, so where their numbers meet the backend keeps the first point and drops the other as
a duplicate. That cannot be undone once sent; the logger that finds the backend's cursor past what it numbered
itself says so, naming the job, so the loss is never silent (README: a job has one logger at a time)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
SAID = "another logger is writing this job"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the loggers, not the database, are under test
def test_a_second_logger_of_the_job_is_named_once_their_numbers_collide(
    backend: BackendProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id, token = backend.create_job()
    caplog.set_level(logging.WARNING, logger="trainingplatform_sdk")

    def open_logger(name: str) -> TrainingLogger:
        return TrainingLogger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / name, settings=SETTINGS
        )

    first = open_logger("first")
    second = None
    try:
        first.log_metric("first", 0.0, step=0)
        assert first.flush(30)
        assert SAID not in caplog.text  # one logger alone never meets another's numbers

        second = open_logger("second")  # numbers after the cursor: 2
        second.log_metric("second", 0.0, step=0)
        assert second.flush(30)
        for step in range(1, 6):  # numbered 2 to 6 by the first logger: its 2 is a duplicate of the second's
            first.log_metric("first", float(step), step=step)
        assert first.flush(30)
        second.log_metric("second", 1.0, step=1)  # numbered 3: the first logger's 3 is stored already
        second.flush(30)

        said = [record for record in caplog.records if SAID in record.getMessage()]
        assert len(said) == 1, caplog.text
        assert job_id in said[0].getMessage() and "metrics" in said[0].getMessage()
        assert said[0].levelno == logging.ERROR
        assert backend.cursor_row(job_id, "metrics")["duplicate_count"] == 2
    finally:
        first.close(10)
        if second is not None:
            second.close(10)
