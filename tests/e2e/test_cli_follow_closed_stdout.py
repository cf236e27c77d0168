"""`tp watch` (and `tp train`, which follows the same way) on a job that is still running ends quietly with 141 once
its stdout is closed (`tp watch JOB | head -1`), as the other commands do, instead of following the job to its end
with nobody reading."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient


def test_watch_of_a_running_job_ends_with_141_when_its_stdout_is_closed(tmp_path: Path) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    backend.start()
    logger = None
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(
                framework="timm", model="resnet10t", dataset="digits", epochs=3, dispatch=False, display_name="live"
            )
        job_id = created.job.job_id
        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
        )
        logger.update_status("running")
        for step in range(5):
            logger.log_message(f"line {step}")
        assert logger.flush(timeout=30)
        env = backend_env(backend, tmp_path / "no-config.json")
        read, write = os.pipe()
        os.close(read)  # what `| head -1` leaves once head exited
        try:
            process = subprocess.Popen([TP, "watch", job_id], stdout=write, stderr=subprocess.PIPE, env=env)
        finally:
            os.close(write)
        try:
            _, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise AssertionError("tp watch kept following a running job with its stdout closed") from None
        assert (process.returncode, err.decode(errors="replace")) == (141, "")
        assert backend.job_status(job_id) == "RUNNING"  # the job is not touched
    finally:
        if logger is not None:
            logger.close(timeout=10)
        backend.close()
