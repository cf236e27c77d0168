"""TrainingLogger under faults of its caller and of its own: odd values, a dead sender, spool I/O errors, and when
a spool directory is removed."""

from __future__ import annotations

import decimal
import errno
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability.polling import wait_until
from support.backend import BackendProcess
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.sender.validation import Validator
from trainingplatform_sdk.telemetry.spool import Spool

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)


def spooled_points(directory: Path) -> list[telemetry_pb2.MetricPoint]:
    spool = Spool(directory, "job-1", 1 << 30, 1 << 20)
    try:
        return [
            point
            for record in spool.records("metrics")
            for point in request_points(telemetry_pb2.StreamMetricsRequest.FromString(spool.read(record)))
        ]
    finally:
        spool.close()


class Unconvertible:
    def __float__(self) -> float:
        raise RuntimeError("not today")

    def __str__(self) -> str:
        raise RuntimeError("not printable either")


def test_logging_never_raises_for_a_value(
    tmp_path: Path, unreachable_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
        logger.log_metric("huge", 10**400)  # type: ignore[arg-type]
        logger.log_metric("minus_huge", -(10**400))  # type: ignore[arg-type]
        logger.log_metric("int", 3)
        logger.log_metric("numpy_f32", np.float32(1.5))  # type: ignore[arg-type]
        logger.log_metric("numpy_i64", np.int64(7))  # type: ignore[arg-type]
        logger.log_metric("tensor", torch.tensor(2.5))  # type: ignore[arg-type]
        logger.log_metric("decimal", decimal.Decimal("0.25"))  # type: ignore[arg-type]
        logger.log_metric("bool", True)
        for _ in range(3):  # each refused key is warned about once
            logger.log_metric("none", None)  # type: ignore[arg-type]
            logger.log_metric("text", "1.5")  # type: ignore[arg-type]
            logger.log_metric("vector", torch.tensor([1.0, 2.0]))  # type: ignore[arg-type]
            logger.log_metric("broken", Unconvertible())  # type: ignore[arg-type]
        logger.log_metrics({"many/huge": 10**400, "many/none": None, "many/numpy": np.float64(4.0)})  # type: ignore[dict-item]
        logger.log_message(Unconvertible(), level=None)  # type: ignore[arg-type]
        logger.log_message("odd level", level=object())  # type: ignore[arg-type]
        report = logger.close(0.2)
    values = {point.key: point.value for point in spooled_points(tmp_path)}
    assert values == {
        "huge": math.inf,
        "minus_huge": -math.inf,
        "int": 3.0,
        "numpy_f32": 1.5,
        "numpy_i64": 7.0,
        "tensor": 2.5,
        "decimal": 0.25,
        "bool": 1.0,
        "many/huge": math.inf,
        "many/numpy": 4.0,
    }
    assert report.invalid == 13 and report.logged_logs == 2
    refused = [record.getMessage() for record in caplog.records if "refused before sending" in record.getMessage()]
    assert len(refused) == 5, refused
    for key in ("none", "text", "vector", "broken", "many/none"):
        assert sum(f"'{key}'" in message for message in refused) == 1, refused


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_infinite_step_or_epoch_is_counted_invalid_and_the_sender_goes_on(
    backend: BackendProcess, tmp_path: Path
) -> None:
    # int(inf) raises OverflowError, which used to escape the checks and stop the sender: every later point was lost.
    job_id, token = backend.create_job()
    logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    logger.log_metric("loss", 1.0, step=1)
    assert logger.flush(30)
    logger.log_metric("loss", 1.0, step=math.inf)  # type: ignore[arg-type]
    logger.log_metric("loss", 1.0, step=2, epoch=-math.inf)  # type: ignore[arg-type]
    logger.log_metric("loss", 1.0, step=np.inf)  # type: ignore[arg-type]
    logger.log_metric("loss", 1.0, step=decimal.Decimal("Infinity"))  # type: ignore[arg-type]
    logger.log_message("a line of no step", step=math.inf)  # type: ignore[arg-type]
    for step in range(2, 12):
        logger.log_metric("loss", float(step), step=step)
    logger.log_message("a line", step=11)
    assert logger.flush(30)
    assert logger.enabled
    report = logger.close(30)
    assert report.invalid == 5 and report.pending_metrics == 0 and report.pending_logs == 0
    assert backend.metric_sequences(job_id) == list(range(1, 12))
    assert backend.log_sequences(job_id) == [1]


def test_a_dead_sender_turns_the_logger_off_and_counts_what_it_discards(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: Validator, item: object) -> None:
        raise RuntimeError("a bug in the sender")

    monkeypatch.setattr(Validator, "metric", crash)
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path)
    logger.log_metric("loss", 1.0)
    sender = logger._sender
    assert sender is not None
    sender.join(10)
    assert not sender.is_alive()
    wait_until(lambda: not logger.enabled, 30, "the logger turned itself off")
    for step in range(10_000):
        logger.log_metric("loss", 1.0, step=step)
    logger.log_metrics({"a": 1.0, "b": 2.0})
    logger.log_message("lost too")
    assert len(logger._buffer) == 0  # nothing piles up
    report = logger.close(0.2)
    assert report.dropped >= 10_003
    assert logger.close(0.2) is report


def test_the_sender_survives_spool_write_errors(
    tmp_path: Path, unreachable_address: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Segments cannot be written (read-only, permission denied, disk full): the sender keeps memory_buffer_points
    # points in memory, drops the oldest beyond, counts and logs the loss once, and writes again once it can.
    failing = {"on": True}
    real_append = Spool.append

    def append(self: Spool, *args: object) -> bool:
        if failing["on"]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_append(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Spool, "append", append)
    settings = LoggerSettings(memory_buffer_points=5000, max_batch_points=1000, reconnect_initial_backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        logger = TrainingLogger(
            "job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path, settings=settings
        )
        for step in range(20_000):
            logger.log_metric("loss", float(step), step=step)
        wait_until(lambda: logger.stats.logged_metrics == 20_000, 30, "every point taken from the buffer")
        wait_until(lambda: logger.stats.dropped == 15_000, 30, "the points past memory dropped")
        assert logger.enabled and logger._sender is not None and logger._sender.is_alive()
        assert logger.stats.pending_metrics == 5000
        failing["on"] = False
        report = logger.close(0.5)
    assert report.dropped == 15_000 and report.spooled == 5000 and report.pending_metrics == 5000
    # The newest points are kept.
    assert [point.sequence for point in spooled_points(tmp_path)] == list(range(15_001, 20_001))
    assert len([r for r in caplog.records if "points are dropped" in r.getMessage()]) == 1


def test_a_failed_segment_write_leaves_no_torn_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path, "job-1", 1 << 30, 1 << 20)
    assert spool.append("metrics", b"first", 1, 1, 1)
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        real_write(fd, data[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError):
        spool.append("metrics", b"second", 2, 2, 1)
    monkeypatch.setattr(os, "write", real_write)
    assert spool.append("metrics", b"third", 3, 3, 1)
    assert spool.pending["metrics"] == 2
    spool.close()
    reopened = Spool(tmp_path, "job-1", 1 << 30, 1 << 20)
    assert [reopened.read(record) for record in reopened.records("metrics")] == [b"first", b"third"]
    reopened.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_spool_is_removed_once_the_job_ended_and_everything_is_delivered(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, token = backend.create_job()
    spool_dir = tmp_path / "spool"
    logger = TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS
    )
    logger.update_status("running")
    for step in range(1000):
        logger.log_metric("loss", float(step), step=step)
    logger.update_status("completed")
    report = logger.close(30)
    assert report.pending_metrics == 0 and report.calls_pending == 0 and report.calls_delivered == 2
    assert not spool_dir.exists()
    assert backend.job_status(job_id) == "COMPLETED"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_spool_stays_until_the_job_ended(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token = backend.create_job()
    spool_dir = tmp_path / "spool"
    logger = TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS
    )
    logger.update_status("running")
    logger.log_metric("loss", 1.0)
    assert logger.close(30).pending_metrics == 0
    assert spool_dir.is_dir()  # no terminal status: the trainer service may still have to report one


def test_the_spool_stays_while_anything_is_pending(tmp_path: Path, unreachable_address: str) -> None:
    logger = TrainingLogger("job-1", backend_address=unreachable_address, token="t", spool_dir=tmp_path / "spool")
    logger.log_metric("loss", 1.0)
    logger.update_status("completed")
    report = logger.close(0.2)
    assert report.pending_metrics == 1 and report.calls_pending == 1
    assert [point.value for point in spooled_points(tmp_path / "spool")] == [1.0]


def _spool_while_down(backend: BackendProcess, spool_dir: Path, points: int) -> tuple[str, TrainingLogger]:
    """A logger of a new job that spools `points` metric points while the backend is stopped."""
    job_id, token = backend.create_job()
    backend.stop()
    logger = TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS
    )
    logger.update_status("running")
    for step in range(points):
        logger.log_metric("loss", float(step), step=step)
    wait_until(lambda: logger.stats.spooled == points, 30, "every point spooled")
    return job_id, logger


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_sender_survives_a_spooled_segment_that_is_gone(
    backend: BackendProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A tmp cleaner or a user freeing disk deletes the segments while the backend is away: the replay drops their
    # points (counted, logged once) and delivers everything logged after them, the terminal status included; the
    # points spooled after the deletion go to a new segment, not into the deleted one.
    spool_dir = tmp_path / "spool"
    with caplog.at_level(logging.WARNING, logger="trainingplatform_sdk.logger"):
        job_id, logger = _spool_while_down(backend, spool_dir, 100)
        for segment in spool_dir.glob("metrics-*.seg"):
            segment.unlink()
        for step in range(100, 200):
            logger.log_metric("loss", float(step), step=step)
        wait_until(lambda: logger.stats.spooled == 200, 30, "the points logged since spooled")
        backend.restart()
        logger.update_status("completed")
        assert logger.flush(30) is False  # points were lost
        assert logger._sender is not None and logger._sender.is_alive() and logger.enabled
        report = logger.close(30)
    assert report.dropped == 100 and report.committed_metrics == 100 and report.pending_metrics == 0
    assert report.calls_delivered == 2 and report.error is None
    assert backend.metric_sequences(job_id) == list(range(101, 201))
    assert backend.job_status(job_id) == "COMPLETED"
    lost = [r for r in caplog.records if "cannot be read back" in r.getMessage()]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_damaged_spooled_record_is_dropped_and_the_rest_delivered(backend: BackendProcess, tmp_path: Path) -> None:
    # A record whose bytes changed on disk after it was written (a bad sector, a stray write) fails its checksum
    # when read back: it is dropped, the records around it are delivered.
    spool_dir = tmp_path / "spool"
    job_id, logger = _spool_while_down(backend, spool_dir, 50)
    for step in range(50, 100):
        logger.log_metric("loss", float(step), step=step)
    wait_until(lambda: logger.stats.spooled == 100, 30, "every point spooled")
    (segment,) = spool_dir.glob("metrics-*.seg")
    data = bytearray(segment.read_bytes())
    length = int.from_bytes(data[:4], "little")
    data[40 : 40 + 8] = b"\xff" * 8  # inside the first record's payload (the header is 28 bytes)
    assert length > 20  # the damage lies inside it
    segment.write_bytes(bytes(data))
    backend.restart()
    logger.update_status("completed")
    report = logger.close(30)
    stored = backend.metric_sequences(job_id)
    first_record = 100 - len(stored)
    assert report.dropped == first_record > 0 and report.committed_metrics == len(stored)
    assert stored == list(range(first_record + 1, 101))
    assert backend.job_status(job_id) == "COMPLETED"
