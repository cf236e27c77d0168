"""Reports a job's status to the backend on behalf of a training process that could not do it itself."""

from __future__ import annotations

import asyncio
import logging

import grpc
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc

from trainingplatform_sdk.channel import auth_metadata, open_aio_channel

__all__ = ["report_status"]

_log = logging.getLogger(__name__)

# Worth another try: the backend restarting or briefly overloaded.
_RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
    }
)


async def report_status(
    *,
    endpoint: str,
    token: str,
    job_id: str,
    status: common_pb2.JobStatus,
    reason: str,
    error_message: str = "",
    attempts: int = 5,
    timeout_s: float = 10.0,
) -> bool:
    """Calls UpdateStatus with the job's telemetry token, retrying transient errors with a growing delay.

    FAILED_PRECONDITION means the backend refused the transition: nearly always because the job already reached
    a terminal status (the process reported it before it ended), which counts as success: nothing is overwritten.
    It can also mean the job never left QUEUED (its RUNNING was never delivered); the backend's lease fails such a
    job with the reason. Other failures are logged, never raised: a report that cannot
    be delivered must not disturb the service.

    Args:
        endpoint: The backend's telemetry address, as StartTraining received it.
        token: The job's telemetry token (never logged).
        job_id: The job.
        status: The terminal status to report.
        reason: Why, in a sentence.
        error_message: On FAILED, the error in one line.
        attempts: Calls before giving up.
        timeout_s: Deadline of each call.

    Returns:
        True when the backend holds a terminal status for the job afterwards.
    """
    channel = open_aio_channel(endpoint)
    request = telemetry_pb2.UpdateStatusRequest(
        job_id=job_id, status=status, reason=reason, error_message=error_message
    )
    name = common_pb2.JobStatus.Name(status)
    try:
        stub = telemetry_pb2_grpc.TrainingTelemetryServiceStub(channel)
        for attempt in range(attempts):
            try:
                response = await stub.UpdateStatus(request, metadata=auth_metadata(token), timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    _log.info("job %s already ended; %s not reported: %s", job_id, name, error.details())
                    return True
                if error.code() in _RETRYABLE and attempt + 1 < attempts:
                    await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
                    continue
                _log.warning(
                    "could not report %s for job %s to %s: %s %s",
                    name,
                    job_id,
                    endpoint,
                    error.code().name,
                    error.details(),
                )
                return False
            if response.changed:
                # The process did not deliver its own final status: worth knowing when it happens often.
                _log.info("reported %s for job %s to the backend (%s)", name, job_id, reason)
            else:
                _log.debug("job %s already had %s", job_id, name)
            return True
        return False
    finally:
        await channel.close()
