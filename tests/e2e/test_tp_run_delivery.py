"""`tp run` and what it delivers: a backend outage at the end of the command loses nothing, a clean run leaves no
spool behind."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
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


def test_ctrl_c_during_the_final_delivery_says_so_then_stops_it_and_keeps_everything(
    backend: BackendProcess, tmp_path: Path
) -> None:
    # The command ended and the backend is down: tp run delivers the last lines and the final status for up to
    # --delivery-timeout. One Ctrl-C was swallowed without a word (tp run waited the whole timeout), and a later
    # one raised KeyboardInterrupt out of the logger's close: exit 130 with no outcome, no resume command, the job
    # left RUNNING. Now the first says what is being delivered and that another stops it; the second stops it, keeps
    # everything for `tp run --resume` and exits 130.
    go_on = tmp_path / "go-on"
    path = script(
        tmp_path,
        "quick.py",
        f"""
        import os, time
        print("started", flush=True)
        while not os.path.exists({str(go_on)!r}):  # the test stops the backend meanwhile
            time.sleep(0.05)
        print("last line", flush=True)
        """,
    )
    process = start_tp(
        tp_env(backend, tmp_path), tmp_path, "run", "--delivery-timeout", "90", "--", sys.executable, path
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        assert process.stdout.readline().strip() == "started"
        backend.stop()
        go_on.touch()
        assert process.stdout.readline().strip() == "last line"
        time.sleep(1.5)  # the command exited: tp run is delivering to a backend that does not answer
        process.send_signal(signal.SIGINT)
        seen = ""
        said = "-"
        while "delivering" not in said and said:
            said = process.stderr.readline()
            seen += said
        assert "Ctrl-C again" in said and "--resume" in said, said
        assert process.poll() is None  # the first Ctrl-C only says it: delivery goes on
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)  # well before the 90 s of --delivery-timeout
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "COMPLETED (exit code 0)" in stderr, stderr
    found = re.search(r"deliver them with: (.+)$", stderr, re.MULTILINE)
    assert found, stderr
    resume = shlex.split(found.group(1))

    backend.restart()
    delivered = subprocess.run(
        [TP, *resume[1:]], capture_output=True, text=True, env=tp_env(backend, tmp_path), timeout=120, cwd=tmp_path
    )
    assert delivered.returncode == 0, delivered.stderr
    job, logs = read_job(backend, job_of(seen))
    assert job.status == "COMPLETED", job.status
    assert "last line" in [line.message for line in logs]
    assert_nothing_left(tmp_path)
