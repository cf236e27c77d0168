"""`tp run` and what it delivers: a backend outage at the end of the command loses nothing, a clean run leaves no
spool behind."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support.backend import BackendProcess
from test_tp_run import assert_nothing_left, job_of, read_job, script, tp_run

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_a_clean_run_with_a_logger_leaves_no_spool(backend: BackendProcess, tmp_path: Path) -> None:
    path = script(
        tmp_path,
        "logs.py",
        """
        from trainingplatform_sdk import TrainingLogger
        logger = TrainingLogger()
        logger.log_metric("train/loss", 0.25, step=1, epoch=0)
        logger.log_message("from the logger")
        print("done")
        """,
    )
    result = tp_run(backend, tmp_path, "--", sys.executable, path)
    assert result.returncode == 0, result.stderr
    job, logs = read_job(backend, job_of(result.stderr))
    assert job.status == "COMPLETED" and "from the logger" in [line.message for line in logs]
    assert len(backend.metric_rows(job.job_id)) == 1
    assert_nothing_left(tmp_path)
