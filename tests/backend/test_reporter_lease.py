"""The reporter lease: a RUNNING job that no trainer runs (created with dispatch=false: `tp run`, a script of your own
with a TrainingLogger) is FAILED once no telemetry call of its reporter reached the backend for
TP_REPORTER_TIMEOUT_S, so a reporter killed before it reported a final status does not leave its job RUNNING for
good. Any telemetry call counts (a stream message, GetStreamCursor, UpdateStatus, ...); the clock starts again when
a backend process starts, so a backend outage fails nothing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth
from support.streams import metric_messages
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

TIMEOUT_S = 2.0
LEASE_ENV = {"TP_REPORTER_TIMEOUT_S": str(TIMEOUT_S), "TP_WATCH_INTERVAL_S": "0.2"}


def _running_job(backend: BackendProcess) -> tuple[str, str]:
    job_id, token = backend.create_job()
    backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING),
        metadata=auth(token),
        timeout=10,
    )
    return job_id, token


class _Reporter(threading.Thread):
    """Keeps in touch with the backend for a job, with cursor reads or with stream messages, until stopped."""

    def __init__(self, backend: BackendProcess, job_id: str, token: str, *, streaming: bool) -> None:
        super().__init__(daemon=True)
        self.backend, self.job_id, self.token, self.streaming = backend, job_id, token, streaming
        self.stop = threading.Event()
        self.errors: list[Exception] = []

    def _messages(self):
        sequence = 0
        while not self.stop.is_set():
            sequence += 1
            yield from metric_messages(self.job_id, sequence, sequence)
            self.stop.wait(0.3)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.streaming:
                    self.backend.telemetry().StreamMetrics(self._messages(), metadata=auth(self.token), timeout=60)
                else:
                    self.backend.telemetry().GetStreamCursor(
                        telemetry_pb2.GetStreamCursorRequest(job_id=self.job_id), metadata=auth(self.token), timeout=5
                    )
                    self.stop.wait(0.3)
            except Exception as error:  # a backend restart: try again
                self.errors.append(error)
                self.stop.wait(0.3)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_job_no_trainer_runs_fails_when_its_reporter_falls_silent_and_not_while_it_keeps_in_touch(
    database_url: str, tmp_path: Path
):
    backend = BackendProcess(database_url, tmp_path / "data", extra_env=LEASE_ENV)
    backend.start()
    reporters: list[_Reporter] = []
    try:
        silent, _ = _running_job(backend)
        polling = _running_job(backend)
        streaming = _running_job(backend)
        pending, _ = backend.create_job()  # never started: nothing to fail
        reporters = [
            _Reporter(backend, *polling, streaming=False),
            _Reporter(backend, *streaming, streaming=True),
        ]
        for reporter in reporters:
            reporter.start()
        wait_until(lambda: backend.job_status(silent) == "FAILED", 10 * TIMEOUT_S, "the silent reporter's job failed")
        job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=silent), metadata=auth(backend.internal_token))
        assert "TP_REPORTER_TIMEOUT_S" in job.job.error_message
        assert "no telemetry call" in job.job.error_message
        time.sleep(2 * TIMEOUT_S)
        assert backend.job_status(polling[0]) == "RUNNING"
        assert backend.job_status(streaming[0]) == "RUNNING"
        assert backend.job_status(pending) == "PENDING"
        for reporter in reporters:
            reporter.stop.set()
        wait_until(lambda: backend.job_status(polling[0]) == "FAILED", 10 * TIMEOUT_S, "the poller's job failed")
        wait_until(lambda: backend.job_status(streaming[0]) == "FAILED", 10 * TIMEOUT_S, "the streamer's job failed")
    finally:
        for reporter in reporters:
            reporter.stop.set()
        backend.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_backend_outage_longer_than_the_timeout_fails_no_job_whose_reporter_comes_back(
    database_url: str, tmp_path: Path
):
    # A longer timeout than the other tests': the reporter's first call after the restart must land within it even
    # on a loaded machine (with 2 s, a first call late by 1.5 s failed the job and the test, not the backend).
    timeout_s = 6.0
    env = {"TP_REPORTER_TIMEOUT_S": str(timeout_s), "TP_WATCH_INTERVAL_S": "0.2"}
    backend = BackendProcess(database_url, tmp_path / "data", extra_env=env)
    backend.start()
    reporter = None
    try:
        job_id, token = _running_job(backend)
        backend.stop()
        time.sleep(timeout_s + 2)  # the job's last contact grows older than the timeout while no backend runs
        backend.start()
        # The reporter comes back within the timeout of the backend's start (a trainer reconnecting after backoff),
        # after the lease's first rounds (every 0.2 s): only the grace from the backend's start keeps the job running.
        time.sleep(1.0)
        reporter = _Reporter(backend, job_id, token, streaming=False)
        reporter.start()
        time.sleep(2 * timeout_s)
        assert backend.job_status(job_id) == "RUNNING"
        assert not reporter.errors
        reporter.stop.set()
        # ... and the lease still holds for it: once it falls silent, its job fails.
        wait_until(lambda: backend.job_status(job_id) == "FAILED", 5 * timeout_s, "the silent reporter's job failed")
    finally:
        if reporter is not None:
            reporter.stop.set()
        backend.close()
