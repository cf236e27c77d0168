"""A header value that is not valid UTF-8 (which gRPC's own clients never send, but any HTTP/2 client can) never
puts the value in the log: gRPC logs such a value, token included, with a traceback for every call; the servers
replace that with one line a minute that does not show it, on every method and header, in every server process
(the backend, its --workers, a trainer)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2
from support.backend import BackendProcess, postgres_database
from support.raw_h2 import call
from support.workers import WorkersBackend
from trainer_service.trainer_process import TrainerProcess
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.server.lifecycle import NonUtf8HeaderFilter

CALLS = 50
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
CURSOR = "/trainingplatform.telemetry.v1.TrainingTelemetryService/GetStreamCursor"
LINE = "not valid UTF-8"


def _flood(address: str, secret: str) -> None:
    """CALLS health checks, each with a header that is not UTF-8 and holds `secret`."""
    request = health_pb2.HealthCheckRequest().SerializeToString()
    for index in range(CALLS):
        call(address, HEALTH_CHECK, [(b"x-anything", f"{secret}-{index}\xff".encode("latin-1"))], request)


def _check_log(log: str, secrets: list[str], at_most: int) -> None:
    for secret in secrets:
        assert secret not in log
    assert "Invalid encoding" not in log
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if LINE in line]
    assert 1 <= len(lines) <= at_most, lines
    assert all("value not shown" in line for line in lines), lines


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the log, not the database, is under test
def test_the_backend_never_logs_a_token_that_is_not_utf8(backend: BackendProcess) -> None:
    job_id, job_token = backend.create_job()
    cursor = telemetry_pb2.GetStreamCursorRequest(job_id=job_id).SerializeToString()
    answer = call(backend.address, CURSOR, [(b"authorization", f"Bearer {job_token}\xa0".encode("latin-1"))], cursor)
    assert answer, "the backend answers the call"
    _flood(backend.address, "secret-in-a-header")
    backend.wait_healthy()
    _check_log(backend.log_text(), [job_token, "secret-in-a-header"], at_most=1)


def test_backend_workers_never_log_a_header_that_is_not_utf8(tmp_path: Path) -> None:
    with postgres_database() as url:
        backend = WorkersBackend(url, tmp_path / "data", workers=2)
        backend.start()
        try:
            _flood(backend.address, "secret-in-a-header")
            backend.wait_healthy()
        finally:
            backend.close()
    _check_log(backend.log_text(), ["secret-in-a-header"], at_most=2)  # one line a minute per worker


def test_a_trainer_never_logs_a_header_that_is_not_utf8(tmp_path: Path) -> None:
    trainer = TrainerProcess(tmp_path / "trainer").start()
    try:
        _flood(trainer.address, trainer.token)
    finally:
        trainer.close()
    _check_log(trainer.log_text(), [trainer.token], at_most=1)


def test_the_line_after_the_interval_counts_the_records_dropped_since(caplog: pytest.LogCaptureFixture) -> None:
    grpc_log = logging.getLogger("test.header_encoding.grpc")
    grpc_log.addFilter(NonUtf8HeaderFilter(logging.getLogger("test.header_encoding"), interval_s=0.2))
    with caplog.at_level(logging.INFO):
        for index in range(30):
            grpc_log.error("Invalid encoding on %s", f"secret-{index}\xff".encode("latin-1"))
        time.sleep(0.3)
        grpc_log.error("Invalid encoding on %s", b"secret-last\xff")
        grpc_log.error("another record")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3, messages
    assert ": 1 such call(s)" in messages[0] and ": 30 such call(s)" in messages[1]  # 29 dropped, then the last
    assert messages[2] == "another record"
    assert not any("secret" in message for message in messages)
