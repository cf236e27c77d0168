"""The Node client's subscribeTelemetry against a real backend that is killed (SIGKILL) mid-stream and restarted:
the subscription resumes from its last cursor, so every point arrives exactly once and the terminal status too, as
the Python client's subscribe does. Stopping it on purpose (the caller's AbortSignal, close()) still ends it."""

from __future__ import annotations

import json
import select
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.node import start_node
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient

HERE = Path(__file__).parent
POINTS = 3000


def _start_subscriber(backend: BackendProcess, job_id: str, **env: str) -> subprocess.Popen[str]:
    """The Node subscriber (subscribe_telemetry.mjs), once its first event (the PENDING status) has arrived."""
    env = {"TP_BACKEND_ADDRESS": backend.address, "TP_TOKEN": backend.read_token, "TP_JOB_ID": job_id, **env}
    process = start_node(HERE / "subscribe_telemetry.mjs", env)
    assert process.stderr is not None
    ready, _, _ = select.select([process.stderr], [], [], 30)
    line = process.stderr.readline() if ready else ""
    if line.strip() != "subscribed":
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the Node subscriber did not subscribe: {line}{err}{out}")
    return process


def _answer(process: subprocess.Popen[str], timeout: float) -> dict:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the Node subscriber did not end within {timeout}s: {err[-3000:]}")
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return json.loads(out)


@pytest.mark.timeout(240)
def test_the_node_subscriber_resumes_after_the_backend_is_killed_mid_stream(backend: BackendProcess, tmp_path: Path):
    subscriber: subprocess.Popen[str] | None = None
    try:
        with JobsClient(backend.address, backend.internal_token) as client:
            created = client.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False)
        job_id = created.job.job_id
        subscriber = _start_subscriber(backend, job_id, TP_MAX_RECONNECT_MS="60000")

        logged = 0
        killed_at: list[int] = []
        failures: list[BaseException] = []

        def kill_and_restart() -> None:
            try:
                killed_at.append(logged)
                backend.kill()  # SIGKILL: the HTTP/2 connection breaks without a GOAWAY
                backend.restart()  # same port, same database
            except BaseException as error:  # reported below
                failures.append(error)

        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=created.telemetry_token, spool_dir=tmp_path / "spool"
        )
        try:
            logger.update_status("running")
            killer = threading.Timer(2.0, kill_and_restart)
            killer.start()
            for sequence in range(1, POINTS + 1):
                logger.log_metric("train/loss", 1.0 / sequence, step=sequence)
                logged = sequence
                if sequence % 10 == 0:
                    time.sleep(0.01)  # about 3 s of streaming: the kill lands in the middle
            killer.join(90)
            assert not failures, failures
            logger.update_status("completed")
            report = logger.close(90)
        finally:
            logger.close(5)
        assert report.error is None, report
        assert killed_at and 0 < killed_at[0] < POINTS, f"the backend was killed after {killed_at} points"
        assert backend.metric_sequences(job_id) == list(range(1, POINTS + 1))

        answer = _answer(subscriber, 120)
        sequences = answer["metric_sequences"]
        assert answer["error"] is None, f"{answer['error']} after {len(sequences)} points, {answer['statuses']}"
        assert len(sequences) == POINTS, f"{len(sequences)} of {POINTS} points"
        assert sequences == list(range(1, POINTS + 1))  # each exactly once, in order
        assert answer["statuses"] == ["JOB_STATUS_PENDING", "JOB_STATUS_RUNNING", "JOB_STATUS_COMPLETED"]
    finally:
        if subscriber is not None and subscriber.poll() is None:
            subscriber.kill()
            subscriber.communicate()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stop", ["abort", "close"])
def test_stopping_the_node_subscriber_on_purpose_ends_it(backend: BackendProcess, stop: str):
    """A cancellation the caller asked for (its AbortSignal, or closing the client) is not resumed."""
    job_id, _ = backend.create_job()
    subscriber = _start_subscriber(
        backend, job_id, TP_KEEP_FOLLOWING="1", TP_STOP_AFTER_MS="1500", TP_STOP=stop, TP_MAX_RECONNECT_MS="60000"
    )
    answer = _answer(subscriber, 30)
    assert answer["statuses"] == ["JOB_STATUS_PENDING"]
    assert answer["error"] is not None and answer["error"]["code"] == "Canceled", answer
    assert answer["after_stop_ms"] < 1000, answer  # ended at once, no reconnect attempts
