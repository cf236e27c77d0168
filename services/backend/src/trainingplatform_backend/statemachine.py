"""The job status state machine."""

from __future__ import annotations

from typing import cast

from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk.errors import FailedPreconditionError, InvalidArgumentError

PENDING, QUEUED, RUNNING = "PENDING", "QUEUED", "RUNNING"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})

# PENDING -> RUNNING is allowed for jobs created with dispatch=false, whose trainer the caller starts itself.
# FAILED from PENDING and QUEUED covers a dispatch that failed and a trainer that died before it started.
ALLOWED: dict[str, frozenset[str]] = {
    PENDING: frozenset({QUEUED, RUNNING, CANCELLED, FAILED}),
    QUEUED: frozenset({RUNNING, CANCELLED, FAILED}),
    RUNNING: frozenset({COMPLETED, FAILED, CANCELLED}),
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


def status_name(value: int) -> str:
    """The stored name (`RUNNING`) of a JobStatus enum value; INVALID_ARGUMENT for unspecified or unknown."""
    if value == common_pb2.JOB_STATUS_UNSPECIFIED:
        raise InvalidArgumentError("status is required (JOB_STATUS_UNSPECIFIED is not a status)")
    try:
        return common_pb2.JobStatus.Name(value).removeprefix("JOB_STATUS_")
    except ValueError:
        raise InvalidArgumentError(f"unknown job status value {value}") from None


def status_value(name: str) -> common_pb2.JobStatus:
    """The JobStatus enum value of a stored status name."""
    return cast(common_pb2.JobStatus, common_pb2.JobStatus.Value(f"JOB_STATUS_{name}"))


def check_transition(current: str, target: str) -> bool:
    """Returns False when `target` is already the status (a retried call), True when it is a valid change.

    Raises:
        FailedPreconditionError: the state machine does not allow the change; the message names the current status.
    """
    if current == target:
        return False
    if target not in ALLOWED[current]:
        final = " (a terminal status is final)" if current in TERMINAL else ""
        raise FailedPreconditionError(f"job is {current}{final}; it cannot move to {target}")
    return True
