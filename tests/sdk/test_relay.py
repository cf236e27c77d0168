"""A TrainingLogger under `tp run` (TP_RUN_JOB_ID names its job): its log records and statuses are relayed to
`tp run` as marked lines on file descriptor 2 (`telemetry/relay.py`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry.relay import RELAY_JOB_ENV, parse_relayed, write_relayed

# How Python hands a program a file name that is not UTF-8 (os.listdir, sys.argv): a lone surrogate per bad byte.
UNDECODABLE = os.fsdecode(b"/data/img\xff.jpg")


@contextlib.contextmanager
def stderr_to(fd: int) -> Iterator[None]:
    """File descriptor 2 is `fd` within the block."""
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def relayed(data: bytes) -> list[dict]:
    records = [parse_relayed(line) for line in data.decode("utf-8").split("\n")]
    return [record for _, record in filter(None, records)]


def test_write_relayed_replaces_what_utf8_cannot_encode() -> None:
    read_end, write_end = os.pipe()
    try:
        assert write_relayed({"kind": "log", "level": 2, "message": f"skipping {UNDECODABLE}"}, fd=write_end)
        os.close(write_end)
        assert relayed(os.read(read_end, 1 << 16)) == [
            {"kind": "log", "level": 2, "message": "skipping /data/img?.jpg"}
        ]
    finally:
        os.close(read_end)


def test_a_relayed_record_holding_a_lone_surrogate_reaches_tp_run(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The line could not be encoded: write_relayed returned False, and the record was dropped without a word.
    monkeypatch.setenv(RELAY_JOB_ENV, "job-1")
    read_end, write_end = os.pipe()
    try:
        logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
        with stderr_to(write_end):
            logger.log_message(f"skipping {UNDECODABLE}", level="WARNING")
            logger.update_status("running", reason=f"data in {UNDECODABLE}")
        logger.close(0.2)
        os.close(write_end)
        records = relayed(os.read(read_end, 1 << 16))
    finally:
        os.close(read_end)
    assert records[0] == {"kind": "log", "level": common_pb2.LOG_LEVEL_WARNING, "message": "skipping /data/img?.jpg"}
    assert records[1]["kind"] == "status" and records[1]["reason"] == "data in /data/img?.jpg"
    assert len(records) == 2


def test_records_that_cannot_be_relayed_are_warned_about_once_and_counted_as_dropped(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # They were warned about once; the delivery report and the close summary also said nothing was lost.
    monkeypatch.setenv(RELAY_JOB_ENV, "job-1")
    read_end, write_end = os.pipe()
    os.close(read_end)  # `tp run` is gone: writing fails with EPIPE
    try:
        logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
        with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"), stderr_to(write_end):
            for line in range(3):
                logger.log_message(f"line {line}")
            logger.update_status("running")
            assert (logger.stats.dropped, logger.stats.calls_dropped) == (3, 1)
            report = logger.close(0.2)
    finally:
        os.close(write_end)
    warnings = [r.getMessage() for r in caplog.records if "could not be written to `tp run`" in r.getMessage()]
    assert len(warnings) == 1 and "a log record" in warnings[0], warnings
    assert (report.dropped, report.calls_dropped) == (3, 1)
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("job job-1: closed with")]
    summary = [message for message in summary if "dropped" in message]
    assert len(summary) == 1 and "3 metric points and log records and 1 calls" in summary[0], summary
    assert "`tp run`" in summary[0], summary
