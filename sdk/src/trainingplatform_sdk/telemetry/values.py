"""What the TrainingLogger's callers pass, as the contract's values: job statuses, log levels, the torchrun rank."""

from __future__ import annotations

import logging
import os
from typing import cast

from trainingplatform.common.v1 import common_pb2

__all__ = ["job_status", "log_level", "torchrun_rank"]

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


def torchrun_rank() -> int:
    """This process's RANK under torchrun (0 when not set or not a number): written on every log record."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


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
    """The LogLevel of a name (`WARNING`, any case), a LogLevel value, or a `logging` level; else INFO."""
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
