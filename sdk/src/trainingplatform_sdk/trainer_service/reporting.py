"""The end of a run, reported to the backend on behalf of a training process that could not do it itself.

When a run ends, `report_end` first delivers whatever the process left in its spool, then the terminal status its
exit implies, so a status never overtakes the metrics logged before it. The spool is retried with backoff, for up
to SPOOL_REPLAY_MAX_S, while the backend is unreachable and while another process still holds its lock; the
status waits for it. A shutdown of the service (`stop` set) ends the delivery within about a second, leaving the rest
in the spool and the run unreported, for the next start of the service on the same data directory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

import grpc
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2, telemetry_pb2_grpc
from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.channel import auth_metadata, open_aio_channel
from trainingplatform_sdk.errors import SpoolLockedError
from trainingplatform_sdk.trainer_service.run import Run

__all__ = ["SPOOL_REPLAY_MAX_S", "report_end", "report_status"]

_log = logging.getLogger(__name__)

#: How long an ended run's leftover spool is retried while the backend is unreachable, in seconds.
SPOOL_REPLAY_MAX_S = 3600.0
#: Longest wait between two attempts to deliver an ended run's spool, in seconds.
SPOOL_REPLAY_MAX_DELAY_S = 30.0
#: How long one attempt waits for the backend to commit an ended run's spool, in seconds.
SPOOL_REPLAY_ATTEMPT_S = 60.0

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


async def report_end(run: Run, stop: threading.Event | None = None) -> bool:
    """Delivers an ended run's leftover spool, then reports the terminal status its end implies.

    Returns:
        False when `stop` (the service shutting down) ended the spool's delivery first: nothing was reported and
        the rest is in the spool. True otherwise (reported, or given up after SPOOL_REPLAY_MAX_S, logged).
    """
    stop = stop or threading.Event()
    if not await _deliver_spool(run, stop):
        return False
    if run.state == trainer_pb2.RUN_STATE_SUCCEEDED:
        await _report(run, common_pb2.JOB_STATUS_COMPLETED, "the training process exited with code 0")
    elif run.state == trainer_pb2.RUN_STATE_CANCELLED:
        reason = run.cancel_reason
        if run.killed_after_grace:
            reason += "; the process did not stop within its grace period and was killed"
        await _report(run, common_pb2.JOB_STATUS_CANCELLED, reason)
    else:
        await _report(
            run,
            common_pb2.JOB_STATUS_FAILED,
            "the trainer service saw the training process end abnormally",
            run.error_message,
        )
    return True


async def _deliver_spool(run: Run, stop: threading.Event) -> bool:
    """Replays what the ended process left in its spool, retrying while the backend is unreachable or while
    another process still holds the spool's lock (a forked data loader worker of the ended process, which may
    outlive it for a moment). False when `stop` ended it first."""
    spool = run.output_dir / "spool"
    if not spool.is_dir():
        return True
    delay, deadline = 1.0, time.monotonic() + SPOOL_REPLAY_MAX_S
    while True:
        try:
            delivered = await asyncio.to_thread(_replay_spool, run, spool, stop)
        except SpoolLockedError as error:
            _log.info("run %s: %s; retrying in %.0fs", run.run_id, error, delay)
            delivered = False
        except Exception:
            _log.exception("replaying the spool of run %s failed", run.run_id)
            return True
        if delivered:
            return True
        if stop.is_set():
            return False
        if time.monotonic() + delay > deadline:
            _log.error(
                "run %s: the backend stayed unreachable or the spool locked; its spool %s is kept undelivered",
                run.run_id,
                spool,
            )
            return True
        await asyncio.to_thread(stop.wait, delay)
        if stop.is_set():
            return False
        delay = min(delay * 2, SPOOL_REPLAY_MAX_DELAY_S)


async def _report(run: Run, status: common_pb2.JobStatus, reason: str, error: str = "") -> None:
    try:
        await report_status(
            endpoint=run.telemetry_endpoint,
            token=run.telemetry_token,
            job_id=run.job_id,
            status=status,
            reason=reason,
            error_message=error,
        )
    except Exception:
        _log.exception("reporting the end of run %s failed", run.run_id)


def _replay_spool(run: Run, spool: Path, stop: threading.Event) -> bool:
    """Delivers a spool through a TrainingLogger of the job (replayed on creation), for up to
    SPOOL_REPLAY_ATTEMPT_S or until `stop` is set; True when nothing is left."""
    from trainingplatform_sdk.telemetry.logger import TrainingLogger

    logger = TrainingLogger(
        run.job_id, backend_address=run.telemetry_endpoint, token=run.telemetry_token, spool_dir=spool
    )
    deadline = time.monotonic() + SPOOL_REPLAY_ATTEMPT_S
    while not stop.is_set() and logger.enabled:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        began = time.monotonic()
        if logger.flush(timeout=min(1.0, remaining)):
            break
        stop.wait(max(0.0, 1.0 - (time.monotonic() - began)))  # a flush that fails at once is not a busy loop
    report = logger.close(timeout=0.0 if stop.is_set() else 5.0)
    left = report.pending_metrics + report.pending_logs + report.calls_pending
    if report.replayed or left:
        _log.info("run %s: replayed %d points left in its spool, %d still pending", run.run_id, report.replayed, left)
    return left == 0 and not report.error
