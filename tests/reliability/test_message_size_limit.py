"""A backend with a small message size limit (TP_MAX_MESSAGE_BYTES): the SDK sizes its messages under it.

The backend tells its limit in GetStreamCursor; the SDK's batches, and the spooled records it replays, stay under it.
A message refused as too large anyway (RESOURCE_EXHAUSTED) is split, never sent again unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess, auth, free_port
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.sender import codec as codec_module

from reliability.polling import wait_until

LIMIT = 64 * 1024
POINTS = 50_000
# Log lines of 16 KiB (the longest the contract keeps): a few of them fill a 64 KiB message.
LOG_LINES = 40
LOG_LINE = "x" * (16 * 1024 - 64)
SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)


@pytest.fixture
def small_limit_backend(database_url: str, tmp_path: Path) -> Iterator[BackendProcess]:
    """A backend that refuses request messages over 64 KiB."""
    process = BackendProcess(database_url, tmp_path / "backend-data", extra_env={"TP_MAX_MESSAGE_BYTES": str(LIMIT)})
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def unreachable_address() -> str:
    """A loopback address where nothing listens: connections are refused at once."""
    return f"127.0.0.1:{free_port()}"


def _log_everything(logger: TrainingLogger) -> None:
    for index in range(POINTS):
        logger.log_metric("train/a_rather_long_metric_key_for_bigger_messages", float(index), step=index)
        if index % (POINTS // LOG_LINES) == 0:
            logger.log_message(f"{index} {LOG_LINE}")


def _assert_all_committed(backend: BackendProcess, job_id: str, report) -> None:  # type: ignore[no-untyped-def]
    assert backend.metric_sequences(job_id) == list(range(1, POINTS + 1))
    assert backend.log_sequences(job_id) == list(range(1, LOG_LINES + 1))
    assert report.committed_metrics == POINTS and report.committed_logs == LOG_LINES
    assert report.pending_metrics == report.pending_logs == 0
    assert report.error is None and report.dropped == 0 and report.invalid == 0


def test_get_stream_cursor_tells_the_server_limit(small_limit_backend: BackendProcess) -> None:
    job_id, token = small_limit_backend.create_job()
    cursor = small_limit_backend.telemetry().GetStreamCursor(
        telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=auth(token), timeout=10
    )
    assert cursor.max_message_bytes == LIMIT
    assert cursor.last_metric_sequence == cursor.last_log_sequence == 0


@pytest.mark.timeout(180)
def test_a_64_kib_server_limit_with_50000_points_all_committed(
    small_limit_backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    backend = small_limit_backend
    job_id, token = backend.create_job()
    logger = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    _log_everything(logger)
    assert logger.flush(60)
    report = logger.close(60)
    print(report)
    _assert_all_committed(backend, job_id, report)
    assert report.reconnects == 0  # no message was refused: none broke a stream


@pytest.mark.timeout(180)
def test_records_spooled_under_a_larger_budget_are_split_for_a_64_kib_server(
    small_limit_backend: BackendProcess,
    tmp_path: Path,
    unreachable_address: str,
    open_logger: Callable[..., TrainingLogger],
) -> None:
    backend = small_limit_backend
    job_id, token = backend.create_job()
    spool = tmp_path / "spool"
    # Offline first: everything goes to the spool in records of up to 1 MiB (the default budget).
    offline = open_logger(job_id, backend_address=unreachable_address, token=token, spool_dir=spool, settings=SETTINGS)
    _log_everything(offline)
    assert offline.close(30).spooled == POINTS + LOG_LINES
    # Then a process that reaches the backend replays them.
    logger = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=spool, settings=SETTINGS)
    assert logger.flush(60)
    report = logger.close(60)
    print(report)
    assert backend.metric_sequences(job_id) == list(range(1, POINTS + 1))
    assert backend.log_sequences(job_id) == list(range(1, LOG_LINES + 1))
    assert report.replayed == POINTS + LOG_LINES and report.pending_metrics == report.pending_logs == 0
    assert report.error is None


@pytest.mark.timeout(180)
def test_a_message_refused_as_too_large_is_split_not_resent(
    small_limit_backend: BackendProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    open_logger: Callable[..., TrainingLogger],
) -> None:
    """A server that does not tell its limit (or a proxy with a smaller one): RESOURCE_EXHAUSTED splits."""
    monkeypatch.setattr(codec_module.Codec, "apply_server_limit", lambda self, limit: None)
    backend = small_limit_backend
    job_id, token = backend.create_job()
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = open_logger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS
        )
        _log_everything(logger)
        wait_until(lambda: logger.stats.committed_metrics == POINTS, 60, "every point committed")
        assert logger.flush(60)
        report = logger.close(60)
    print(report)
    _assert_all_committed(backend, job_id, report)
    assert any("too large" in record.getMessage() for record in caplog.records)


@pytest.mark.timeout(120)
def test_points_on_a_refused_message_go_again_while_the_caller_logs_nothing_more(
    small_limit_backend: BackendProcess,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    open_logger: Callable[..., TrainingLogger],
) -> None:
    """The caller logs a burst and then nothing (a long evaluation): the message that carried the burst's last
    points is refused as too large, and its points are sent again in smaller messages on their own, without a
    flush, a close or a next point to wake the sender."""
    monkeypatch.setattr(codec_module.Codec, "apply_server_limit", lambda self, limit: None)
    backend = small_limit_backend
    job_id, token = backend.create_job()
    logger = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    lines = 20  # 320 KiB: whatever the drains take, the message with the last lines is over 64 KiB
    for index in range(lines):
        logger.log_message(f"{index} {LOG_LINE}")
    wait_until(lambda: logger.stats.committed_logs == lines, 30, "every line committed with no flush")
    assert backend.log_sequences(job_id) == list(range(1, lines + 1))
    assert logger.stats.reconnects == 0 and logger.stats.error is None
