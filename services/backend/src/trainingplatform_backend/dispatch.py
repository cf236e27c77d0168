"""Hands jobs to trainer services, cancels them there, and fails jobs whose trainer is gone (the lease).

Replica policy: a framework may list several trainer addresses (TP_TRAINERS). A job goes to the replica with
the fewest of this database's live (QUEUED or RUNNING) jobs, ties broken in configuration order. When a replica
is unreachable or full (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), the next one is tried. When none
accepts, the job stays QUEUED and this backend retries in the background (backoff from 1 s to 10 s) for up to
`dispatch_timeout_s` (TP_DISPATCH_TIMEOUT_S, 600 s), then fails it with every replica's last reason. A trainer
refusing the request itself (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION: an unknown model, a missing
dataset) fails the job at once with the trainer's message. Retries live in the memory of the backend that took
the job; if it stops, the lease below fails the job once the retries would have ended.

Lease: every `watch_interval_s` the backend asks each live job's trainer about its run (GetTraining). A job is
failed, with the reason, when its run ended without the job reaching a terminal status for `lease_s` (the
process died before reporting), or when the trainer no longer knows the run or has been unreachable, and the
job's telemetry has not moved, for `lease_s` (a training process outlives a crashed trainer service and keeps
reporting on its own: it is not failed while it does). So a job whose trainer and process die is FAILED within
lease_s + watch_interval_s (70 s by default).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
from sqlalchemy import func, select
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainingplatform_sdk.channel import open_aio_channel
from trainingplatform_sdk.errors import FailedPreconditionError

from trainingplatform_backend import statemachine
from trainingplatform_backend.models import IngestCursor, Job
from trainingplatform_backend.store import Store, Transition, utcnow
from trainingplatform_backend.subscriptions import POKE, Hub

log = logging.getLogger(__name__)

# A busy or unreachable trainer is asked again after 1 s, then twice as long each time, up to 10 s.
RETRY_FIRST_DELAY_S = 1.0
RETRY_MAX_DELAY_S = 10.0

RETRY_NEXT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
ENDED_RUN_STATES = frozenset(
    {trainer_pb2.RUN_STATE_SUCCEEDED, trainer_pb2.RUN_STATE_FAILED, trainer_pb2.RUN_STATE_CANCELLED}
)


@dataclass
class DispatchSettings:
    """What the dispatcher needs from the backend's settings."""

    trainers: dict[str, list[str]]
    """Framework -> trainer service addresses (TP_TRAINERS)."""
    telemetry_endpoint: str
    """The backend's address as trainers reach it (TP_TELEMETRY_ENDPOINT)."""
    internal_token: str = field(repr=False)
    """The service token sent to trainers."""
    call_timeout_s: float = 30.0
    """Deadline of StartTraining and CancelTraining calls."""
    dispatch_timeout_s: float = 600.0
    """TP_DISPATCH_TIMEOUT_S: how long a job waits for a free or reachable trainer before it fails."""
    lease_s: float = 60.0
    """TP_TRAINER_LEASE_S: how long a live job may go without a trainer that runs it."""
    watch_interval_s: float = 10.0
    """TP_WATCH_INTERVAL_S: how often live jobs' trainers are asked about their runs."""


class Dispatcher:
    """Talks to trainer services on behalf of the backend."""

    def __init__(self, store: Store, hub: Hub, settings: DispatchSettings) -> None:
        self._store = store
        self._hub = hub
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unreachable_since: dict[str, float] = {}
        self._last_committed: dict[str, int] = {}
        self._quiet_since: dict[str, float] = {}
        self._run_ended_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._retries: dict[str, asyncio.Task[None]] = {}

    def has_trainer(self, framework: str) -> bool:
        """Whether a trainer is configured for the framework."""
        return bool(self._settings.trainers.get(framework))

    def _stub(self, address: str) -> trainer_pb2_grpc.TrainerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = open_aio_channel(address)
            self._channels[address] = channel
        return trainer_pb2_grpc.TrainerServiceStub(channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._settings.internal_token}"),)

    def _replicas(self, framework: str) -> list[str]:
        """The framework's trainers, least loaded first."""
        addresses = self._settings.trainers.get(framework, [])
        with self._store.engine.connect() as conn:
            load = dict(
                conn.execute(
                    select(Job.trainer_address, func.count())
                    .where(
                        Job.trainer_address.in_(addresses),
                        Job.status.in_([statemachine.QUEUED, statemachine.RUNNING]),
                    )
                    .group_by(Job.trainer_address)
                ).all()
            )
        return sorted(addresses, key=lambda address: load.get(address, 0))

    async def _transition(self, job_id: str, target: str, reason: str, error: str = "") -> Transition | None:
        try:
            transition = await asyncio.to_thread(
                self._store.transition, job_id, target, reason=reason, error_message=error
            )
        except FailedPreconditionError:
            return None  # the job moved on meanwhile (the trainer reported first): nothing to do
        if transition.changed:
            self._hub.publish(transition.job_pk, POKE)
        return transition

    async def dispatch(self, job_id: str, spec: common_pb2.JobSpec, telemetry_token: str) -> None:
        """QUEUED, then StartTraining on the first replica that accepts. When every replica is busy or down, the
        job stays QUEUED and is retried in the background; a trainer refusing the job fails it."""
        await self._transition(job_id, statemachine.QUEUED, "dispatching to a trainer")
        request = trainer_pb2.StartTrainingRequest(
            job_id=job_id,
            spec=spec,
            telemetry_endpoint=self._settings.telemetry_endpoint,
            telemetry_token=telemetry_token,
        )
        reasons = await self._try_replicas(job_id, request)
        if reasons:
            log.info("job %s waits for a %s trainer: %s", job_id, spec.framework, "; ".join(reasons))
            deadline = time.monotonic() + self._settings.dispatch_timeout_s
            self._retries[job_id] = asyncio.create_task(
                self._retry(job_id, request, deadline, reasons), name=f"dispatch-{job_id}"
            )

    async def _try_replicas(self, job_id: str, request: trainer_pb2.StartTrainingRequest) -> list[str]:
        """One pass over the replicas. Returns [] when the job was handed over or failed for good, else the
        reasons every replica gave (all retryable)."""
        replicas = await asyncio.to_thread(self._replicas, request.spec.framework)
        reasons: list[str] = []
        for address in replicas:
            try:
                response = await self._stub(address).StartTraining(
                    request, metadata=self._metadata(), timeout=self._settings.call_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                reasons.append(f"{address}: {error.code().name} {error.details()}")
                if error.code() in RETRY_NEXT:
                    continue
                await self._transition(
                    job_id,
                    statemachine.FAILED,
                    "the trainer refused the job",
                    f"trainer {address} refused the job: {error.details()}",
                )
                return []
            await asyncio.to_thread(
                self._store.set_dispatch, job_id, trainer_address=address, trainer_run_id=response.run_id
            )
            log.info("job %s dispatched to %s (run %s)", job_id, address, response.run_id)
            return []
        return reasons

    async def _retry(
        self, job_id: str, request: trainer_pb2.StartTrainingRequest, deadline: float, reasons: list[str]
    ) -> None:
        delay = RETRY_FIRST_DELAY_S
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)
                view = await asyncio.to_thread(self._store.get_job, job_id)
                if view.job.status != statemachine.QUEUED:
                    return  # cancelled meanwhile
                reasons = await self._try_replicas(job_id, request)
                if not reasons:
                    return
            message = (
                f"no {request.spec.framework} trainer accepted the job within "
                f"{self._settings.dispatch_timeout_s:.0f} s: " + "; ".join(reasons)
            )
            log.warning("job %s: %s", job_id, message)
            await self._transition(job_id, statemachine.FAILED, "no trainer accepted the job", message)
        finally:
            self._retries.pop(job_id, None)

    async def cancel(self, job_id: str, trainer_address: str) -> None:
        """Asks the job's trainer to stop its run; an unreachable trainer is logged, not fatal."""
        if not trainer_address:
            return
        try:
            await self._stub(trainer_address).CancelTraining(
                trainer_pb2.CancelTrainingRequest(job_id=job_id),
                metadata=self._metadata(),
                timeout=self._settings.call_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            log.warning(
                "could not cancel job %s on %s: %s %s", job_id, trainer_address, error.code().name, error.details()
            )

    # --- the lease ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the watch loop."""
        if any(self._settings.trainers.values()):
            self._task = asyncio.create_task(self._watch(), name="trainer-lease")

    async def stop(self) -> None:
        """Stops the watch loop and closes the channels."""
        for task in [self._task, *self._retries.values()]:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.watch_interval_s)
            try:
                await self.check_leases()
            except Exception:  # the loop must survive anything; the next round retries
                log.exception("lease check failed")

    def _live_jobs(self) -> Sequence[tuple[str, str, int]]:
        """Live dispatched jobs with their trainer and how much telemetry they committed so far."""
        committed = (
            select(IngestCursor.job_pk, func.sum(IngestCursor.last_sequence).label("total"))
            .group_by(IngestCursor.job_pk)
            .subquery()
        )
        with self._store.engine.connect() as conn:
            return [
                (job_id, address, int(total or 0))
                for job_id, address, total in conn.execute(
                    select(Job.job_id, Job.trainer_address, committed.c.total)
                    .join(committed, committed.c.job_pk == Job.id, isouter=True)
                    .where(Job.status.in_([statemachine.QUEUED, statemachine.RUNNING]), Job.trainer_address != "")
                )
            ]

    def _orphans(self, older_than: dt.datetime) -> Sequence[str]:
        with self._store.engine.connect() as conn:
            return list(
                conn.execute(
                    select(Job.job_id).where(
                        Job.status == statemachine.QUEUED, Job.trainer_address == "", Job.updated_at < older_than
                    )
                ).scalars()
            )

    async def check_leases(self) -> None:
        """One round of the lease: fails live jobs whose trainer no longer runs them, and queued jobs whose
        dispatch retries stopped with the backend that held them."""
        now = time.monotonic()
        lease = self._settings.lease_s
        cutoff = utcnow() - dt.timedelta(seconds=self._settings.dispatch_timeout_s + lease)
        for job_id in await asyncio.to_thread(self._orphans, cutoff):
            if job_id not in self._retries:
                await self._transition(
                    job_id,
                    statemachine.FAILED,
                    "never dispatched",
                    "the backend that queued this job stopped before a trainer accepted it",
                )
        for job_id, address, committed in await asyncio.to_thread(self._live_jobs):
            # A job whose telemetry still moves is alive, whatever its trainer service says: the training process
            # outlives a crashed or restarted service and keeps reporting with its own token.
            if self._last_committed.get(job_id) != committed:
                self._last_committed[job_id] = committed
                self._quiet_since[job_id] = now
            quiet = now - self._quiet_since.setdefault(job_id, now)
            try:
                run = (
                    await self._stub(address).GetTraining(
                        trainer_pb2.GetTrainingRequest(job_id=job_id), metadata=self._metadata(), timeout=10
                    )
                ).run
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    if quiet >= lease:
                        await self._transition(
                            job_id,
                            statemachine.FAILED,
                            "trainer lost the run",
                            f"trainer {address} no longer knows this job's run (was it restarted?)",
                        )
                    continue
                since = self._unreachable_since.setdefault(address, now)
                if now - since >= lease and quiet >= lease:
                    await self._transition(
                        job_id,
                        statemachine.FAILED,
                        "trainer unreachable",
                        f"trainer {address} unreachable for {now - since:.0f} s ({error.code().name})",
                    )
                continue
            self._unreachable_since.pop(address, None)
            if run.state in ENDED_RUN_STATES:
                ended = self._run_ended_at.setdefault(job_id, now)
                if now - ended >= lease:
                    state = trainer_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_")
                    detail = run.error_message or f"exit code {run.exit_code}"
                    await self._transition(
                        job_id,
                        statemachine.FAILED,
                        "training process ended without a status",
                        f"the training process ended ({state}, {detail}) without reporting a final status",
                    )
                    self._run_ended_at.pop(job_id, None)
