"""The background loops (dispatch, leases) log a database outage once when it starts and once when it ends; before,
each failed round logged a traceback (the dispatcher: every 0.5 s, about 600 in a five-minute outage)."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError
from trainingplatform_backend.interceptors import RoundFailures

LOG = logging.getLogger("test.round_failures")


def _outage() -> OperationalError:
    lost = ConnectionError("server closed the connection")
    return OperationalError("SELECT 1", {}, lost, connection_invalidated=True)


def test_an_outage_is_one_warning_then_one_line_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    failures = RoundFailures("dispatch round", LOG)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(600):
            failures.failed(_outage())
        failures.succeeded()
        failures.succeeded()
    assert [(r.levelname, r.exc_info is None) for r in caplog.records] == [("WARNING", True), ("INFO", True)]
    assert "database is unavailable (ConnectionError)" in caplog.records[0].getMessage()
    assert "the database is back after" in caplog.records[1].getMessage()


def test_any_other_error_is_logged_with_its_traceback_every_time(caplog: pytest.LogCaptureFixture) -> None:
    failures = RoundFailures("lease check", LOG)
    refused = ProgrammingError("SELECT nope", {}, Exception("relation does not exist"))
    with caplog.at_level(logging.INFO, logger=LOG.name):
        failures.failed(refused)
        failures.failed(KeyError("x"))
    assert [(r.levelname, r.exc_info is not None) for r in caplog.records] == [("ERROR", True), ("ERROR", True)]
