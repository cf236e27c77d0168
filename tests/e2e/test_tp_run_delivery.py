"""`tp run` and what it delivers: a backend outage at the end of the command loses nothing, a clean run leaves no
spool behind."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support.backend import BackendProcess
from test_tp_run import TP, assert_nothing_left, job_of, read_job, script, start_tp, tp_env, tp_run

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_a_backend_outage_at_the_end_loses_nothing(backend: BackendProcess, tmp_path: Path) -> None:
    go_on = tmp_path / "go-on"
    path = script(
        tmp_path,
        "outage.py",
        f"""
        import os, time
        from trainingplatform_sdk import LoggerSettings, TrainingLogger
        logger = TrainingLogger(settings=LoggerSettings(close_timeout_s=1))
        print("line 1", flush=True)
        print("line 2", flush=True)
        while not os.path.exists({str(go_on)!r}):  # the test stops the backend meanwhile
            time.sleep(0.05)
        for i in (3, 4, 5):
            print(f"line {{i}}", flush=True)
        logger.log_metric("train/loss", 0.5, step=1, epoch=0)
        logger.log_message("logged by the script")
        logger.close()
        """,
    )
    env = {**tp_env(backend, tmp_path), "TP_RUN_DELIVERY_TIMEOUT_S": "2"}
    process = start_tp(env, tmp_path, "--backend", backend.address, "run", "--", sys.executable, path)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "line 1"
        assert process.stdout.readline().strip() == "line 2"
        backend.stop()
        go_on.touch()
        stdout, stderr = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr  # the command's exit code; the delivery problem is said on stderr
    assert "line 5" in stdout
    job_id = job_of(stderr)
    found = re.search(r"deliver them with: (.+)$", stderr, re.MULTILINE)
    assert found, stderr
    resume = shlex.split(found.group(1))
    assert resume[0] == "tp" and "--resume" in resume, resume
    assert "COMPLETED" in stderr

    backend.restart()
    delivered = subprocess.run(
        [TP, *resume[1:]], capture_output=True, text=True, env=tp_env(backend, tmp_path), timeout=120, cwd=tmp_path
    )
    assert delivered.returncode == 0, delivered.stderr
    job, logs = read_job(backend, job_id)
    assert job.status == "COMPLETED", (job.status, delivered.stderr)
    messages = [line.message for line in logs]
    for i in range(1, 6):
        assert f"line {i}" in messages, messages
    assert "logged by the script" in messages
    assert len(backend.metric_rows(job_id)) == 1  # the script's metric, left in its spool, is delivered too
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert_nothing_left(tmp_path)

    again = subprocess.run(
        [TP, *resume[1:]], capture_output=True, text=True, env=tp_env(backend, tmp_path), timeout=60, cwd=tmp_path
    )
    assert again.returncode == 2 and "nothing to deliver" in again.stderr, again.stderr


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
