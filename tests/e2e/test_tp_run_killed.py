"""A `tp run` killed with SIGKILL cannot mark its job: the backend's reporter lease fails it once nothing has called
with the job's token for TP_REPORTER_TIMEOUT_S, and a logger that stays open keeps a quiet job RUNNING (its
heartbeat: a cursor read at least every `heartbeat_interval_s`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from reliability.polling import wait_until
from support.backend import BackendProcess
from test_tp_run import TP, job_of, read_job, script, start_tp, tp_env
from trainingplatform_sdk import LoggerSettings, TrainingLogger

TIMEOUT_S = 2.0
LEASE_ENV = {"TP_REPORTER_TIMEOUT_S": str(TIMEOUT_S), "TP_WATCH_INTERVAL_S": "0.2"}


def _backend(tmp_path: Path) -> BackendProcess:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data", extra_env=LEASE_ENV)
    backend.start()
    return backend


def test_a_job_whose_tp_run_was_killed_fails_once_its_reporter_is_silent(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    pid_file = tmp_path / "pid"
    path = script(
        tmp_path,
        "quiet.py",
        f"""
        import os, time
        open({str(pid_file)!r}, "w").write(str(os.getpid()))
        print("ready", flush=True)
        time.sleep(120)
        """,
    )
    process = start_tp(tp_env(backend, tmp_path), tmp_path, "run", "--", sys.executable, path)
    try:
        assert process.stderr is not None and process.stdout is not None
        job_id = job_of(process.stderr.readline())
        assert process.stdout.readline().strip() == "ready"
        wait_until(lambda: backend.job_status(job_id) == "RUNNING", 30, "the job RUNNING")
        process.kill()  # SIGKILL: tp run reports nothing more
        process.wait(10)
        wait_until(lambda: backend.job_status(job_id) == "FAILED", 30, "the job of the killed tp run FAILED")
        job, _ = read_job(backend, job_id)
        assert "TP_REPORTER_TIMEOUT_S" in job.error_message, job.error_message
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # the script, orphaned by the kill
        backend.close()


def test_an_open_logger_keeps_a_quiet_job_running_and_a_closed_one_does_not(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        job_id, token = backend.create_job()
        settings = LoggerSettings(heartbeat_interval_s=TIMEOUT_S / 4)
        with TrainingLogger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool", settings=settings
        ) as logger:
            logger.update_status("running")
            logger.log_metric("loss", 1.0, step=1)
            assert logger.flush(30)
            time.sleep(4 * TIMEOUT_S)  # a long quiet stretch: evaluation, a checkpoint, a slow data loader
            assert backend.job_status(job_id) == "RUNNING"
        # Closed without a final status (a script that forgot it, or whose process is about to be killed).
        wait_until(lambda: backend.job_status(job_id) == "FAILED", 30, "the job of the closed logger FAILED")
    finally:
        backend.close()


def test_a_resume_after_the_lease_failed_the_job_delivers_the_lines_and_says_the_status_was_refused(
    tmp_path: Path,
) -> None:
    # `tp run` kept its last lines and final status (backend down as the command ended); the backend came back, and
    # nobody vouched for the job for TP_REPORTER_TIMEOUT_S, so it failed it. A later --resume must not claim that
    # the job is COMPLETED.
    backend = _backend(tmp_path)
    try:
        go_on = tmp_path / "go-on"
        path = script(
            tmp_path,
            "outage.py",
            f"""
            import os, time
            print("line 1", flush=True)
            while not os.path.exists({str(go_on)!r}):
                time.sleep(0.05)
            print("line 2", flush=True)
            """,
        )
        env = {**tp_env(backend, tmp_path), "TP_RUN_DELIVERY_TIMEOUT_S": "1"}
        process = start_tp(env, tmp_path, "--backend", backend.address, "run", "--", sys.executable, path)
        try:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "line 1"
            backend.stop()
            go_on.touch()
            _, stderr = process.communicate(timeout=150)
        finally:
            if process.poll() is None:
                process.kill()
        job_id = job_of(stderr)
        resume = next(line for line in stderr.splitlines() if "--resume" in line).split("deliver them with: ")[1]
        backend.start()
        wait_until(lambda: backend.job_status(job_id) == "FAILED", 30, "the lease to fail the silent job")
        delivered = subprocess.run(
            [TP, *resume.split()[1:]], capture_output=True, text=True, env=tp_env(backend, tmp_path), timeout=120
        )
        assert delivered.returncode == 0, delivered.stderr
        _, logs = read_job(backend, job_id)
        assert "line 2" in [line.message for line in logs]  # the lines are still stored (the token's grace)
        assert "everything delivered; COMPLETED" not in delivered.stderr, delivered.stderr
        assert "the job had already ended FAILED" in delivered.stderr, delivered.stderr
        assert "refused" in delivered.stderr and "COMPLETED" in delivered.stderr, delivered.stderr
    finally:
        backend.close()
