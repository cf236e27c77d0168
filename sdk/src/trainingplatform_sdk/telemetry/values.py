"""What the TrainingLogger's callers pass, as the contract's values: job statuses, log levels, the torchrun rank."""

from __future__ import annotations

import logging
import math
import os
from typing import cast

from trainingplatform.common.v1 import common_pb2

__all__ = ["job_status", "log_level", "log_text", "metric_value", "torchrun_rank", "utf8_text"]

_STATUSES: dict[str, common_pb2.JobStatus] = {
    "pending": common_pb2.JOB_STATUS_PENDING,
    "queued": common_pb2.JOB_STATUS_QUEUED,
    "running": common_pb2.JOB_STATUS_RUNNING,
    "completed": common_pb2.JOB_STATUS_COMPLETED,
    "failed": common_pb2.JOB_STATUS_FAILED,
    "cancelled": common_pb2.JOB_STATUS_CANCELLED,
    "canceled": common_pb2.JOB_STATUS_CANCELLED,
}
_LEVELS: dict[str, common_pb2.LogLevel] = {
    "DEBUG": common_pb2.LOG_LEVEL_DEBUG,
    "INFO": common_pb2.LOG_LEVEL_INFO,
    "WARN": common_pb2.LOG_LEVEL_WARNING,
    "WARNING": common_pb2.LOG_LEVEL_WARNING,
    "ERROR": common_pb2.LOG_LEVEL_ERROR,
    "CRITICAL": common_pb2.LOG_LEVEL_CRITICAL,
    "FATAL": common_pb2.LOG_LEVEL_CRITICAL,
}


def metric_value(value: object) -> float | None:
    """A metric value as a float, or None when it is not a number; never raises.

    Anything `float()` takes is a number (ints, bools, numpy scalars, 0-d tensors, Decimal...) except text
    (`"1.5"` is a mistake, not a number); an int too large for a float is +-infinity.
    """
    if isinstance(value, (str, bytes, bytearray)):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        try:
            return math.inf if value > 0 else -math.inf  # type: ignore[operator]
        except Exception:
            return None
    except Exception:
        return None


def log_text(message: object) -> str:
    """A log message as text; never raises (an object that cannot be printed is named by its type)."""
    if type(message) is str:
        return message
    try:
        return str(message)
    except Exception:
        return f"<unprintable {type(message).__name__}>"


def utf8_text(text: str) -> str:
    """`text` as a request (or a line to `tp run`) can carry it: what UTF-8 cannot encode (a lone surrogate, as in a
    file name that Python decoded with surrogateescape) is replaced by `?`. Encoding such text raises, and a request
    holding it cannot be built."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


_MAX_RANK = 2**31 - 1  # LogRecord.rank is an int32 of at least 0


def torchrun_rank() -> int:
    """This process's RANK under torchrun, written on every log record: 0 when it is not set, not a number, or out of
    the record's range (0 to 2**31 - 1; the backend would refuse every record, or the sender could not build one)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0
    return rank if 0 <= rank <= _MAX_RANK else 0


def job_status(status: str | int) -> common_pb2.JobStatus:
    """The JobStatus of a name (`running`, any case; `canceled` too) or enum value.

    Raises:
        ValueError: Unknown status, or UNSPECIFIED.
    """
    if isinstance(status, str):
        value = _STATUSES.get(status.strip().lower())
        if value is None:
            raise ValueError(f"unknown job status {status!r}; expected one of {sorted(_STATUSES)}")
        return value
    if status in common_pb2.JobStatus.values() and status != common_pb2.JOB_STATUS_UNSPECIFIED:
        return cast(common_pb2.JobStatus, status)
    raise ValueError(f"unknown job status {status!r}")


def log_level(level: str | int) -> common_pb2.LogLevel:
    """The LogLevel of a name (`WARNING`, any case), a LogLevel value, or a `logging` level; else INFO (also for
    anything that is neither a string nor an int: never raises)."""
    if isinstance(level, bool) or not isinstance(level, (str, int)):
        return common_pb2.LOG_LEVEL_INFO
    if isinstance(level, str):
        return _LEVELS.get(level.strip().upper(), common_pb2.LOG_LEVEL_INFO)
    if common_pb2.LOG_LEVEL_DEBUG <= level <= common_pb2.LOG_LEVEL_CRITICAL:
        return cast(common_pb2.LogLevel, level)
    # A `logging` module level: DEBUG=10, INFO=20, WARNING=30, ERROR=40, CRITICAL=50.
    if level >= logging.CRITICAL:
        return common_pb2.LOG_LEVEL_CRITICAL
    if level >= logging.ERROR:
        return common_pb2.LOG_LEVEL_ERROR
    if level >= logging.WARNING:
        return common_pb2.LOG_LEVEL_WARNING
    if level >= logging.INFO:
        return common_pb2.LOG_LEVEL_INFO
    return common_pb2.LOG_LEVEL_DEBUG if level > 0 else common_pb2.LOG_LEVEL_INFO
