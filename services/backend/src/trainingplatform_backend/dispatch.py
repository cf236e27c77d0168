"""Hands queued jobs to trainer services, cancels them there, and fails jobs whose trainer is gone (the lease).

Durable dispatch: `CreateJob` stores the job QUEUED and returns; the dispatcher of every backend process works
from the database. It picks QUEUED jobs no trainer accepted yet (`Store.dispatchable`; never one created with
dispatch=false, which its own reporter may have moved to QUEUED), takes one with a claim
in the jobs table (`dispatch_claimed_until`: of several backends one wins; the claim is a lease renewed while
the dispatch lasts, so one left by a killed backend expires within CLAIM_LEASE_S, 15 s) and calls StartTraining.
So a caller's deadline never interrupts a dispatch, and a restarted backend (or another replica) resumes
dispatching the jobs still queued.

Replica policy: a framework may list several trainer addresses (TP_TRAINERS). A job goes to the replica with the
fewest of this database's live (QUEUED or RUNNING) jobs, ties broken in configuration order, except that a replica
which refused a job in the last REFUSAL_MEMORY_S (5 minutes) goes after those that did not, and one whose last
StartTraining was UNAVAILABLE or DEADLINE_EXCEEDED (down, or a host that accepts connections and never answers)
goes last until it answers again: still tried, but no longer costing every pass the call timeout. When a replica is
unreachable or full (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), or refuses the job for a reason of its own
host (FAILED_PRECONDITION: a precondition of its own; NOT_FOUND: a dataset path that exists only on another host),
the next one is tried. (A trainer that cannot start a process at all, its disk full or a permission, answers
UNAVAILABLE.) Jobs are dispatched in the order they were created, one framework's at a time
(`dispatch_queued`): a freed slot goes to the job that waited longest. When no replica accepts, the job stays QUEUED
and the framework's oldest job is tried again (backoff from 1 s to 10 s, ended at once when a job ends: its slot may
be free, `slot_freed`) until it has waited `dispatch_timeout_s` (TP_DISPATCH_TIMEOUT_S, 600 s) without any replica
answering busy, then it fails with every replica's last reason. The timeout counts from the job's creation, and from
the last pass in which a replica answered RESOURCE_EXHAUSTED (`jobs.dispatch_busy_at`): a busy replica is reachable
and will free a slot, so time queued behind long trainings never fails a job; only time in which every replica was
unreachable, refused it or was missing counts. A job whose framework no longer has a trainer configured (TP_TRAINERS
changed since it was queued) waits the same way, logged as a WARNING, and fails with "no <framework> trainer is
configured (TP_TRAINERS)"; the loops run even with TP_TRAINERS empty. A trainer refusing the request itself
(INVALID_ARGUMENT: an unknown model, a bad option) fails the job at once with the trainer's message; so does a pass
in which every replica refused it with FAILED_PRECONDITION or NOT_FOUND, the message naming each replica's reason.

Cancel during dispatch: the trainer is recorded under the job's row lock (`Store.set_dispatch`), which also
returns the job's status; a job cancelled while its trainer was accepting it (CancelJob saw no trainer yet) has
its run cancelled at once, so it stays CANCELLED and nothing trains.

Attempts: every StartTraining is a numbered dispatch attempt (`jobs.dispatch_attempt`) with its own telemetry
token (`auth.derive_job_token(..., attempt)`). Sending the job to the same trainer again reuses the attempt
(StartTraining is idempotent per job there); sending it to another trainer (the previous one timed out, and may
have started a run) makes a new attempt, cancels the previous trainer's run, and fences it: the telemetry
service refuses a superseded attempt's token with ABORTED (`Backend.check_attempt`). A late answer to a superseded
attempt is not recorded (`Store.set_dispatch` checks the attempt) and its run is cancelled. A claim renewal that
fails (a database error) is logged and tried again at the next renewal, and never turns a dispatch into a failure.

Lease: every `watch_interval_s` the backend asks each trainer of live jobs about its runs (one ListTrainings per
trainer). A job is failed, with the reason, when its run ended without the job reaching a terminal status and
its telemetry has not moved for `lease_s` (the process died before reporting; a run whose trainer still replays
its spool keeps delivering, and is waited for), or when the trainer no longer knows the run or has been
unreachable, and the job's telemetry has not moved, for `lease_s` (a training process outlives a crashed
trainer service and keeps reporting on its own: it is not failed while it does). So a job whose trainer and
process die is FAILED within lease_s + watch_interval_s (70 s by default). The lease's per-job memory is pruned
as jobs end.

Stray runs: a job cancelled (or failed) while its trainer was unreachable keeps training there, and a restarted
trainer service adopts the run. So each round of the lease also asks the trainers of jobs that ended CANCELLED or
FAILED between `lease_s` and `stray_run_window_s` (an hour, as long as the job's token may still write) ago about
their runs, and cancels every one still live; a trainer still unreachable is asked again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import DBAPIError
from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from trainingplatform_sdk.channel import ClientTls, open_aio_channel
from trainingplatform_sdk.errors import FailedPreconditionError

from trainingplatform_backend import convert, metrics, statemachine
from trainingplatform_backend.auth import derive_job_token
from trainingplatform_backend.interceptors import RoundFailures, is_outage
from trainingplatform_backend.models import IngestCursor, Job
from trainingplatform_backend.store import JobView, Store, Transition, utcnow
from trainingplatform_backend.subscriptions import POKE, Hub

log = logging.getLogger(__name__)

# A busy or unreachable trainer is asked again after 1 s, then twice as long each time, up to 10 s.
RETRY_FIRST_DELAY_S = 1.0
RETRY_MAX_DELAY_S = 10.0
# How often the database is checked for queued jobs when nothing wakes the dispatcher (another replica's jobs,
# jobs left by a stopped backend, retries).
DISPATCH_POLL_S = 0.5
# A dispatch claim is a lease: held for CLAIM_LEASE_S and renewed every CLAIM_RENEW_S while this backend's pass
# over the replicas lasts, so a backend killed mid-dispatch holds its jobs for at most CLAIM_LEASE_S.
CLAIM_LEASE_S = 15.0
CLAIM_RENEW_S = 5.0
# Runs asked per ListTrainings page.
LIST_PAGE_SIZE = 1000

# How long ListFrameworks waits for a trainer's GetCapabilities answer.
CAPABILITIES_TIMEOUT_S = 2.0
# How long ListFrameworks serves the trainers' last answers before asking them again: a flood of calls (the read
# token may make them) costs the trainers at most one GetCapabilities each per this time and backend process.
FRAMEWORKS_TTL_S = 5.0

RETRY_NEXT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
# A refusal that may be the replica's own (its disk, its permissions, its files): the next replica is tried, and the
# job fails only when every replica refused it.
REFUSED_HERE = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})
# A replica that refused a job goes after the others for this long.
REFUSAL_MEMORY_S = 300.0
# A replica whose last StartTraining ended so (unreachable, or no answer in time) goes after the others until it
# answers again: a host that accepts connections and never answers would otherwise cost every pass the call timeout.
UNANSWERED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
ENDED_RUN_STATES = frozenset(
    {trainer_pb2.RUN_STATE_SUCCEEDED, trainer_pb2.RUN_STATE_FAILED, trainer_pb2.RUN_STATE_CANCELLED}
)


@dataclass(frozen=True)
class FrameworkTrainers:
    """A framework the backend dispatches to, and how many of its trainers answer now (ListFrameworks)."""

    name: str
    trainers: int
    reachable: int
    unreachable_reason: str
    """Why none answered (each trainer's address and error), when none did; else empty."""


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
    """TP_DISPATCH_TIMEOUT_S: how long a job waits QUEUED, without any trainer answering busy (RESOURCE_EXHAUSTED),
    before it fails: counted from its creation and from the last busy answer."""
    lease_s: float = 60.0
    """TP_TRAINER_LEASE_S: how long a live job may go without a trainer that runs it."""
    watch_interval_s: float = 10.0
    """TP_WATCH_INTERVAL_S: how often live jobs' trainers are asked about their runs."""
    stray_run_window_s: float = 3600.0
    """How long after a job ended CANCELLED or FAILED a run its trainer still reports live is cancelled there."""
    trainer_tls: ClientTls | None = None
    """TLS to trainers (TP_TRAINER_TLS_CA_FILE, with TP_TRAINER_TLS_CERT_FILE and TP_TRAINER_TLS_KEY_FILE for mutual
    TLS): every trainer channel uses it, whatever the address's scheme. None: plaintext for `host:port` (TLS with
    the TP_TLS_* client files of the environment for an `https://` address)."""


def live_jobs_query() -> Select[Any]:
    """The lease's read: live dispatched jobs (job id, trainer, sum of their streams' committed sequences). The sum
    is a correlated subquery, read by primary key for each live job only: an aggregate over the whole cursors table
    joined afterwards cost time linear in every job ever run (183 ms at 300,000 jobs), every round of every
    backend process."""
    committed = (
        select(func.sum(IngestCursor.last_sequence))
        .where(IngestCursor.job_pk == Job.id)
        .correlate(Job)
        .scalar_subquery()
    )
    return select(Job.job_id, Job.trainer_address, committed).where(
        Job.status.in_([statemachine.QUEUED, statemachine.RUNNING]), Job.trainer_address != ""
    )


class Dispatcher:
    """Talks to trainer services on behalf of the backend."""

    def __init__(
        self,
        store: Store,
        hub: Hub,
        settings: DispatchSettings,
        *,
        on_attempt: Callable[[str, int], None] | None = None,
    ) -> None:
        """`on_attempt(job_id, attempt)` is told of each new dispatch attempt (the telemetry service's fence)."""
        self._store = store
        self._on_attempt = on_attempt
        self._hub = hub
        self._settings = settings
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._unreachable_since: dict[str, float] = {}
        self._refused_at: dict[str, float] = {}  # replica -> when it last refused a job (REFUSED_HERE)
        self._unanswered: set[str] = set()  # replicas whose last StartTraining ended UNANSWERED
        self._stray_stopped: set[tuple[str, str]] = set()
        # Per live job (pruned each lease round): telemetry seen, since when it is quiet, since when its run ended.
        self._last_committed: dict[str, int] = {}
        self._quiet_since: dict[str, float] = {}
        self._run_ended_at: dict[str, float] = {}
        # Per framework, and per queued job whose dispatch raised (pruned each dispatch round): the next try and the
        # backoff delay; the jobs whose "waits for a trainer" was logged; the dispatches in flight, with framework.
        self._next_try: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self._announced: set[str] = set()
        self._dispatching: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._wake = asyncio.Event()
        self._cancels: set[asyncio.Task[bool]] = set()
        self._round_failures = RoundFailures("dispatch round", log)
        self._lease_failures = RoundFailures("lease check", log)
        self._tasks: list[asyncio.Task[None]] = []
        # ListFrameworks: the last answer and when it came (monotonic), and the refresh in flight that every caller
        # waiting for a newer one shares.
        self._frameworks: tuple[float, list[FrameworkTrainers]] | None = None
        self._frameworks_refresh: asyncio.Task[list[FrameworkTrainers]] | None = None

    def has_trainer(self, framework: str) -> bool:
        """Whether a trainer is configured for the framework."""
        return bool(self._settings.trainers.get(framework))

    async def frameworks(self) -> list[FrameworkTrainers]:
        """Every framework with a trainer configured (TP_TRAINERS), by name, with how many of its trainers answered
        GetCapabilities at most FRAMEWORKS_TTL_S ago (ListFrameworks). Concurrent callers share one refresh, which
        a caller's cancel (its deadline) does not stop."""
        kept = self._frameworks
        if kept is not None and time.monotonic() - kept[0] < FRAMEWORKS_TTL_S:
            return kept[1]
        refresh = self._frameworks_refresh
        if refresh is None:
            refresh = self._frameworks_refresh = asyncio.create_task(self._ask_frameworks())
            refresh.add_done_callback(self._frameworks_refreshed)
        return await asyncio.shield(refresh)

    def _frameworks_refreshed(self, refresh: asyncio.Task[list[FrameworkTrainers]]) -> None:
        self._frameworks_refresh = None
        if not refresh.cancelled() and refresh.exception() is None:  # an error reaches the callers, is not kept
            self._frameworks = (time.monotonic(), refresh.result())

    async def _ask_frameworks(self, timeout_s: float = CAPABILITIES_TIMEOUT_S) -> list[FrameworkTrainers]:
        """`frameworks` asked now: every trainer at once, each within `timeout_s`."""

        async def ask(address: str) -> str:
            """'' when the trainer answered, else why not."""
            try:
                await self._stub(address).GetCapabilities(
                    trainer_pb2.GetCapabilitiesRequest(), metadata=self._metadata(), timeout=timeout_s
                )
            except grpc.aio.AioRpcError as error:
                return f"{address}: {error.code().name}"
            return ""

        names = sorted(name for name, addresses in self._settings.trainers.items() if addresses)
        answers = await asyncio.gather(*(ask(a) for name in names for a in self._settings.trainers[name]))
        result: list[FrameworkTrainers] = []
        for name in names:
            count = len(self._settings.trainers[name])
            mine, answers = answers[:count], answers[count:]
            failures = [failure for failure in mine if failure]
            reachable = count - len(failures)
            reason = "" if reachable else f"no {name} trainer answered: {'; '.join(failures)}"
            result.append(FrameworkTrainers(name, count, reachable, reason))
        return result

    def job_token(self, job_id: str) -> tuple[str, str]:
        """The job's telemetry token and its hash (derived: see `auth.derive_job_token`)."""
        return derive_job_token(self._settings.internal_token, job_id)

    def wake(self) -> None:
        """Tells the dispatcher a job was queued: it looks at the database now rather than at its next poll."""
        self._wake.set()

    def slot_freed(self) -> None:
        """Told that a job ended (its trainer reported a final status, or the lease failed it): a trainer may have a
        free slot now, so every framework's backoff ends and a round starts at once, instead of the oldest queued
        job waiting up to RETRY_MAX_DELAY_S for its framework's next try."""
        for framework in self._settings.trainers:
            self._next_try.pop(framework, None)
            self._delay.pop(framework, None)
        self._wake.set()

    def _stub(self, address: str) -> trainer_pb2_grpc.TrainerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            tls = self._settings.trainer_tls
            channel = open_aio_channel(address, tls=tls, force_tls=tls is not None)
            self._channels[address] = channel
        return trainer_pb2_grpc.TrainerServiceStub(channel)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._settings.internal_token}"),)

    async def validate(self, spec: common_pb2.JobSpec, job_id: str, timeout_s: float = 5.0) -> None:
        """Asks the trainers of the spec's framework to run every check StartTraining runs, starting nothing
        (StartTraining with `validate_only`): CreateJob refuses at once a job that would fail at dispatch.

        Every trainer of the framework is asked at once, and the first decisive answer decides: an accept, or a
        refusal of the spec (INVALID_ARGUMENT); the other calls are cancelled. So a trainer that accepts connections
        but never answers (a blackholed host) does not hold up the others. A NOT_FOUND may be one host's (a path
        only another replica has): the job is refused only when every trainer of the framework answered NOT_FOUND.
        When no trainer answered decisively within `timeout_s` (down, slow, or anything but a refusal) that is
        logged and the job accepted: the dispatch's StartTraining checks it again.

        Raises:
            InvalidArgumentError: A trainer refused the spec (INVALID_ARGUMENT), with its message.
            NotFoundError: Every trainer found no dataset or checkpoint at the spec's path (NOT_FOUND), with their
                messages.
        """
        from trainingplatform_sdk.errors import InvalidArgumentError, NotFoundError

        request = trainer_pb2.StartTrainingRequest(job_id=job_id, spec=spec, validate_only=True)
        addresses = self._settings.trainers.get(spec.framework, [])

        async def ask(address: str) -> grpc.aio.AioRpcError | None:
            try:
                await self._stub(address).StartTraining(request, metadata=self._metadata(), timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                return error
            return None

        asked = {asyncio.ensure_future(ask(address)): address for address in addresses}
        pending = set(asked)
        not_found: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while pending and (left := deadline - time.monotonic()) > 0:
                done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                for task in sorted(done, key=lambda task: addresses.index(asked[task])):
                    address, error = asked[task], task.result()
                    if error is None:
                        return
                    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise InvalidArgumentError(error.details() or "the trainer refused the job spec")
                    if error.code() == grpc.StatusCode.NOT_FOUND:
                        not_found[address] = error.details() or "the trainer found no such file"
                        log.info("job %s: trainer %s: %s", job_id, address, not_found[address])
                        continue
                    log.info(
                        "job %s: trainer %s could not validate the spec (%s %s)",
                        job_id,
                        address,
                        error.code().name,
                        error.details(),
                    )
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in pending:
            log.info("job %s: trainer %s did not answer within %.1f s", job_id, asked[task], timeout_s)
        if not_found and not_found.keys() == set(addresses):
            reasons = {address: not_found[address] for address in addresses}  # in configuration order
            if len(set(reasons.values())) == 1:
                raise NotFoundError(not_found[addresses[0]])
            raise NotFoundError("; ".join(f"{address}: {reason}" for address, reason in reasons.items()))
        log.info("job %s: no trainer validated the spec; accepting it, the dispatch checks it", job_id)

    def _replicas(self, framework: str) -> list[str]:
        """The framework's trainers, least loaded first, those that refused a job in the last REFUSAL_MEMORY_S
        after those that did not, and those whose last StartTraining went unanswered (UNANSWERED) last."""
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
        now = time.monotonic()
        return sorted(
            addresses,
            key=lambda address: (
                address in self._unanswered,
                now - self._refused_at.get(address, -REFUSAL_MEMORY_S) < REFUSAL_MEMORY_S,
                load.get(address, 0),
            ),
        )

    async def transition(self, job_id: str, target: str, reason: str, error: str = "") -> Transition | None:
        """Moves a job on for the backend itself (a lease, a dispatch that failed): subscribers are poked, a job
        ending frees its framework's backoff (`slot_freed`). None when the job had moved on meanwhile."""
        try:
            transition = await asyncio.to_thread(
                self._store.transition, job_id, target, reason=reason, error_message=error
            )
        except FailedPreconditionError:
            return None  # the job moved on meanwhile (the trainer reported first): nothing to do
        if transition.changed:
            self._hub.publish(transition.job_pk, POKE)
            if transition.status in statemachine.TERMINAL:
                self.slot_freed()
        return transition

    # --- dispatch ----------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives as the wait ends
            # (a job ending wakes this loop just as `stop` cancels it), and `stop` then waited for ever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DISPATCH_POLL_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.dispatch_queued()
            except Exception as error:  # the loop must survive anything (a database restart); the next round retries
                self._round_failures.failed(error)
            else:
                self._round_failures.succeeded()

    async def dispatch_queued(self) -> None:
        """One round: for each framework, starts the dispatch of its oldest queued job held by no backend, unless
        one of the framework's is in flight or the framework waits out a backoff (its trainers were all busy or
        unreachable). So jobs start in the order they were created, and a freed slot goes to the job that waited
        longest; a job whose dispatch raised waits out a backoff of its own, the others going first."""
        queued = await asyncio.to_thread(self._store.dispatchable, utcnow())
        metrics.DISPATCH_QUEUE.set(len(queued))
        waiting = {job_id for job_id, _ in queued} | {framework for _, framework in queued}
        for memory in (self._next_try, self._delay):
            for key in [key for key in memory if key not in waiting and key not in self._dispatching]:
                del memory[key]
        self._announced &= waiting
        now = time.monotonic()
        busy = {framework for framework, _ in self._dispatching.values()}
        for job_id, framework in queued:
            if framework in busy or self._next_try.get(framework, 0.0) > now:
                continue
            if job_id in self._dispatching or self._next_try.get(job_id, 0.0) > now:
                continue
            busy.add(framework)
            task = asyncio.create_task(self._dispatch(job_id, framework), name=f"dispatch-{job_id}")
            self._dispatching[job_id] = (framework, task)
            task.add_done_callback(functools.partial(self._dispatched, job_id))

    def _dispatched(self, job_id: str, _task: asyncio.Task[None]) -> None:
        self._dispatching.pop(job_id, None)
        self._wake.set()  # the framework's next job, at once

    async def _dispatch(self, job_id: str, framework: str) -> None:
        """Claims the job, then one pass over the replicas; when none accepts, the claim is released and the
        framework backs off before its oldest job is tried again, or the job fails once it has been queued for
        `dispatch_timeout_s`."""
        try:
            waiting = await self._claim_and_try(job_id)
        except Exception as error:
            if isinstance(error, DBAPIError) and is_outage(error):
                log.warning("dispatch of job %s: the database is unavailable; it is tried again", job_id)
            else:
                log.exception("dispatch of job %s failed; it is tried again", job_id)
            self._backoff(job_id)
            return
        if waiting is None:
            for key in (job_id, framework):
                self._next_try.pop(key, None)
                self._delay.pop(key, None)
        else:
            self._backoff(framework)

    def _backoff(self, key: str) -> None:
        """Delays the next try of a framework (or of one job whose dispatch raised): 1 s, doubling up to 10 s."""
        delay = self._delay.get(key, RETRY_FIRST_DELAY_S / 2) * 2
        self._delay[key] = min(delay, RETRY_MAX_DELAY_S)
        self._next_try[key] = time.monotonic() + self._delay[key]

    async def _claim_and_try(self, job_id: str) -> str | None:
        """Returns None when the job is settled (handed over, failed, or not ours), else its framework."""
        now = utcnow()
        until = now + dt.timedelta(seconds=CLAIM_LEASE_S)
        job = await asyncio.to_thread(self._store.claim_dispatch, job_id, now=now, until=until)
        if job is None:
            return None
        holding = asyncio.create_task(self._hold_claim(job_id, until), name=f"claim-{job_id}")
        try:
            return await self._try_claimed(job)
        finally:
            holding.cancel()
            # Whatever the renewal ended with, the dispatch's own result (or exception) is what counts.
            await asyncio.gather(holding, return_exceptions=True)

    async def _hold_claim(self, job_id: str, until: dt.datetime) -> None:
        """Renews the claim on `job_id` until cancelled, or until it is found lost. A renewal that fails (a database
        error) is logged and tried again at the next tick: the claim lasts CLAIM_LEASE_S, three ticks."""
        while True:
            await asyncio.sleep(CLAIM_RENEW_S)
            renewed = utcnow() + dt.timedelta(seconds=CLAIM_LEASE_S)
            try:
                held = await asyncio.to_thread(self._store.renew_dispatch, job_id, held=until, until=renewed)
            except Exception as error:  # the renewal must outlive a dropped connection or a failover
                log.warning(
                    "job %s: could not renew this backend's dispatch claim (%s); trying again in %.0f s",
                    job_id,
                    type(error).__name__,
                    CLAIM_RENEW_S,
                )
                continue
            if not held:
                log.warning("job %s: this backend's dispatch claim was lost (it expired or was released)", job_id)
                return
            until = renewed

    async def _try_claimed(self, job: Job) -> str | None:
        """One pass over the replicas for a job this backend holds; returns as `_claim_and_try`."""
        settings = self._settings
        job_id = job.job_id
        spec = convert.job_to_proto(JobView(job)).spec
        request = trainer_pb2.StartTrainingRequest(
            job_id=job_id, spec=spec, telemetry_endpoint=settings.telemetry_endpoint
        )
        reasons, busy = await self._try_replicas(job_id, request)
        if not reasons:
            return None
        unconfigured = not self.has_trainer(spec.framework)
        # The timeout counts the time without a trainer that answered busy: from the job's creation, or from the last
        # busy answer (a job queued behind long trainings waits for their slots, however long they take).
        now = utcnow()
        since = now if busy else (job.dispatch_busy_at or job.created_at)
        if now >= since + dt.timedelta(seconds=settings.dispatch_timeout_s):
            message = (
                f"no {spec.framework} trainer accepted the job within {settings.dispatch_timeout_s:.0f} s: "
                + "; ".join(reasons)
            )
            log.warning("job %s: %s", job_id, message)
            metrics.DISPATCHES.labels("timed_out").inc()
            await self.transition(job_id, statemachine.FAILED, "no trainer accepted the job", message)
            await asyncio.to_thread(self._store.release_dispatch, job_id, reasons="; ".join(reasons))
            return None
        if job_id not in self._announced:
            self._announced.add(job_id)
            log.log(
                logging.WARNING if unconfigured else logging.INFO,
                "job %s waits for a %s trainer: %s",
                job_id,
                spec.framework,
                "; ".join(reasons),
            )
        await asyncio.to_thread(
            self._store.release_dispatch, job_id, reasons="; ".join(reasons), busy_at=now if busy else None
        )
        metrics.DISPATCHES.labels("retried").inc()
        return spec.framework

    async def _try_replicas(self, job_id: str, request: trainer_pb2.StartTrainingRequest) -> tuple[list[str], bool]:
        """One pass over the replicas. Returns ([], False) when the job was handed over or failed for good, else the
        reasons every replica gave (retryable, or a refusal of some replicas' own while others were busy or
        unreachable) and whether one answered busy (RESOURCE_EXHAUSTED: reachable, its slots taken)."""
        replicas = await asyncio.to_thread(self._replicas, request.spec.framework)
        if not replicas:
            # Queued while the framework had a trainer (TP_TRAINERS changed since): it waits, then times out.
            return [f"no {request.spec.framework} trainer is configured (TP_TRAINERS)"], False
        reasons: list[str] = []
        refusals = 0
        busy = False
        details = ""
        for address in replicas:
            # Every StartTraining is an attempt with its own token; a new trainer supersedes the previous attempt,
            # whose run (a StartTraining past its deadline may have started one) is cancelled and fenced.
            attempt, superseded = await asyncio.to_thread(self._store.begin_attempt, job_id, address)
            if self._on_attempt is not None:
                self._on_attempt(job_id, attempt)
            if superseded:
                log.info(
                    "job %s: attempt %d goes to %s; cancelling any run on %s", job_id, attempt, address, superseded
                )
                self.cancel_soon(job_id, superseded)
            request.telemetry_token = derive_job_token(self._settings.internal_token, job_id, attempt)[0]
            try:
                response = await self._stub(address).StartTraining(
                    request, metadata=self._metadata(), timeout=self._settings.call_timeout_s
                )
            except grpc.aio.AioRpcError as error:
                details = error.details()
                reasons.append(f"{address}: {error.code().name} {details}")
                if error.code() in UNANSWERED:
                    self._unanswered.add(address)
                else:
                    self._unanswered.discard(address)
                if error.code() in RETRY_NEXT:
                    busy = busy or error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    continue
                if error.code() in REFUSED_HERE:
                    # Maybe this replica's own trouble (a full disk, a path only another host has): the others
                    # are asked; the job fails only when every replica refuses it.
                    log.warning(
                        "job %s: trainer %s refused it (%s %s); trying the other replicas",
                        job_id,
                        address,
                        error.code().name,
                        details,
                    )
                    self._refused_at[address] = time.monotonic()
                    refusals += 1
                    continue
                metrics.DISPATCHES.labels("refused").inc()
                await self.transition(
                    job_id,
                    statemachine.FAILED,
                    "the trainer refused the job",
                    f"trainer {address} refused the job: {details}",
                )
                return [], False
            status = await asyncio.to_thread(
                self._store.set_dispatch,
                job_id,
                attempt=attempt,
                trainer_address=address,
                trainer_run_id=response.run_id,
            )
            self._unanswered.discard(address)
            if status is None:
                # A later attempt superseded this one (this backend lost its claim while the trainer answered):
                # the job is the later attempt's. Its dispatcher cancelled this trainer's run, maybe before the
                # run started: cancelled again here, unless the later attempt went to this same trainer.
                current = await asyncio.to_thread(self._store.get_job, job_id)
                log.warning(
                    "job %s: attempt %d's answer from %s (run %s) came after attempt %d superseded it; not recorded",
                    job_id,
                    attempt,
                    address,
                    response.run_id,
                    current.job.dispatch_attempt,
                )
                if current.job.dispatch_attempt_address != address:
                    self.cancel_soon(job_id, address)
                return [], False
            if status in statemachine.TERMINAL:
                # Cancelled (or failed) while the trainer was accepting it: CancelJob found no trainer to tell.
                log.info(
                    "job %s ended %s while %s accepted it (run %s): cancelling the run",
                    job_id,
                    status,
                    address,
                    response.run_id,
                )
                await self.cancel(job_id, address)
                return [], False
            self._refused_at.pop(address, None)
            log.info("job %s dispatched to %s (run %s)", job_id, address, response.run_id)
            metrics.DISPATCHES.labels("started").inc()
            return [], False
        if replicas and refusals == len(replicas):
            metrics.DISPATCHES.labels("refused").inc()
            if len(replicas) == 1:  # the one trainer's message, as for any refusal
                reason, message = "the trainer refused the job", f"trainer {replicas[0]} refused the job: {details}"
            else:
                reason = "every trainer refused the job"
                message = f"every {request.spec.framework} trainer refused the job: " + "; ".join(reasons)
            await self.transition(job_id, statemachine.FAILED, reason, message)
            return [], False
        return reasons, busy

    def cancel_soon(self, job_id: str, trainer_address: str) -> None:
        """`cancel` in a task of its own, tracked until it ends (and cancelled by `stop`): the caller answers
        without waiting for the trainer, which may be slow or gone. A cancel that fails is retried by the lease's
        stray-run sweep once the trainer answers (`stop_stray_runs`)."""
        if not trainer_address:
            return
        task = asyncio.create_task(self.cancel(job_id, trainer_address), name=f"cancel-{job_id}")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def cancel(self, job_id: str, trainer_address: str) -> bool:
        """Asks the job's trainer to stop its run; returns whether it answered. An unreachable trainer is logged, not
        fatal: the lease's round finds the run still live once the trainer is back, and cancels it then."""
        if not trainer_address:
            return True
        try:
            await self._stub(trainer_address).CancelTraining(
                trainer_pb2.CancelTrainingRequest(job_id=job_id),
                metadata=self._metadata(),
                timeout=self._settings.call_timeout_s,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return True  # no run of the job there: nothing to stop
            log.warning(
                "could not cancel job %s on %s: %s %s; tried again once the trainer answers",
                job_id,
                trainer_address,
                error.code().name,
                error.details(),
            )
            return False
        return True

    # --- the lease ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts the dispatch loop and the watch loop, with or without trainers configured: jobs queued while
        their framework had one still time out, and runs on trainers no longer configured are still watched."""
        self._tasks = [
            asyncio.create_task(self._dispatch_loop(), name="dispatcher"),
            asyncio.create_task(self._watch(), name="trainer-lease"),
        ]

    async def stop(self) -> None:
        """Stops the loops and the dispatches in flight (their claims expire; any backend resumes them), then
        closes the channels."""
        refresh = [self._frameworks_refresh] if self._frameworks_refresh is not None else []
        for task in [*self._tasks, *(task for _, task in self._dispatching.values()), *self._cancels, *refresh]:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.watch_interval_s)
            try:
                await self.check_leases()
            except Exception as error:  # the loop must survive anything; the next round retries
                self._lease_failures.failed(error)
            else:
                self._lease_failures.succeeded()

    def _live_jobs(self) -> Sequence[tuple[str, str, int]]:
        """Live dispatched jobs with their trainer and how much telemetry they committed so far."""
        with self._store.engine.connect() as conn:
            return [(job_id, address, int(total or 0)) for job_id, address, total in conn.execute(live_jobs_query())]

    async def _runs(self, address: str) -> dict[str, trainer_pb2.TrainingRun]:
        """The newest run of each job the trainer knows (every page of one ListTrainings walk)."""
        runs: dict[str, trainer_pb2.TrainingRun] = {}
        token = ""
        while True:
            page = await self._stub(address).ListTrainings(
                trainer_pb2.ListTrainingsRequest(page_size=LIST_PAGE_SIZE, page_token=token),
                metadata=self._metadata(),
                timeout=10,
            )
            for run in page.runs:  # newest first
                runs.setdefault(run.job_id, run)
            token = page.next_page_token
            if not token:
                return runs

    def _ended_jobs(self) -> Sequence[tuple[str, str, str]]:
        """Jobs that ended CANCELLED or FAILED more than `lease_s` ago (a run stopping as asked has ended by then)
        and within `stray_run_window_s`, with their trainer (that of the dispatch attempt when none was recorded: a
        trainer may have accepted the job while its row could not be written) and status."""
        now = utcnow()
        since = now - dt.timedelta(seconds=self._settings.stray_run_window_s)
        before = now - dt.timedelta(seconds=self._settings.lease_s)
        with self._store.engine.connect() as conn:
            return [
                (job_id, address or attempt_address, status)
                for job_id, address, attempt_address, status in conn.execute(
                    select(Job.job_id, Job.trainer_address, Job.dispatch_attempt_address, Job.status).where(
                        Job.status.in_([statemachine.CANCELLED, statemachine.FAILED]),
                        or_(Job.trainer_address != "", Job.dispatch_attempt_address != ""),
                        Job.ended_at >= since,
                        Job.ended_at <= before,
                    )
                )
            ]

    async def _runs_once(self, address: str, fetched: dict[str, Any]) -> dict[str, trainer_pb2.TrainingRun]:
        """`_runs(address)`, asked once per lease round (`fetched` keeps the answer, or the error it raised)."""
        if address not in fetched:
            try:
                fetched[address] = await self._runs(address)
            except grpc.aio.AioRpcError as error:
                fetched[address] = error
        answer = fetched[address]
        if isinstance(answer, grpc.aio.AioRpcError):
            raise answer
        return cast(dict[str, trainer_pb2.TrainingRun], answer)

    async def stop_stray_runs(self, fetched: dict[str, Any] | None = None) -> None:
        """Cancels the runs that trainers still report live for jobs that ended CANCELLED or FAILED; `fetched`: the
        trainers' runs already asked this round (see `_runs_once`)."""
        fetched = {} if fetched is None else fetched
        by_trainer: dict[str, list[tuple[str, str]]] = {}
        ended = await asyncio.to_thread(self._ended_jobs)
        for job_id, address, status in ended:
            by_trainer.setdefault(address, []).append((job_id, status))
        ids = {job_id for job_id, _, _ in ended}
        self._stray_stopped = {(job_id, run_id) for job_id, run_id in self._stray_stopped if job_id in ids}
        for address, jobs in by_trainer.items():
            try:
                runs = await self._runs_once(address, fetched)
            except grpc.aio.AioRpcError:
                continue  # still unreachable: the next round asks again
            for job_id, status in jobs:
                run = runs.get(job_id)
                if run is None or run.state in ENDED_RUN_STATES or (job_id, run.run_id) in self._stray_stopped:
                    continue
                log.warning("job %s ended %s but its run on %s still trains: cancelling it", job_id, status, address)
                if await self.cancel(job_id, address):
                    self._stray_stopped.add((job_id, run.run_id))

    async def check_leases(self) -> None:
        """One round of the lease: fails live jobs whose trainer no longer runs them, and stops stray runs."""
        fetched: dict[str, Any] = {}  # one ListTrainings walk per trainer and round
        await self.stop_stray_runs(fetched)
        now = time.monotonic()
        lease = self._settings.lease_s
        live = await asyncio.to_thread(self._live_jobs)
        ids = {job_id for job_id, _, _ in live}
        for memory in (self._last_committed, self._quiet_since, self._run_ended_at):
            for job_id in [j for j in memory if j not in ids]:
                del memory[job_id]
        by_trainer: dict[str, list[tuple[str, int]]] = {}
        for job_id, address, committed in live:
            by_trainer.setdefault(address, []).append((job_id, committed))
        for address in [a for a in self._unreachable_since if a not in by_trainer]:
            del self._unreachable_since[address]
        for address, jobs in by_trainer.items():
            quiet: dict[str, float] = {}
            for job_id, committed in jobs:
                # A job whose telemetry still moves is alive, whatever its trainer service says: the training
                # process outlives a crashed or restarted service, and a trainer replays an ended run's spool.
                if self._last_committed.get(job_id) != committed:
                    self._last_committed[job_id] = committed
                    self._quiet_since[job_id] = now
                quiet[job_id] = now - self._quiet_since.setdefault(job_id, now)
            try:
                runs = await self._runs_once(address, fetched)
            except grpc.aio.AioRpcError as error:
                since = self._unreachable_since.setdefault(address, now)
                for job_id, _ in jobs:
                    if now - since >= lease and quiet[job_id] >= lease:
                        await self.transition(
                            job_id,
                            statemachine.FAILED,
                            "trainer unreachable",
                            f"trainer {address} unreachable for {now - since:.0f} s ({error.code().name})",
                        )
                continue
            self._unreachable_since.pop(address, None)
            for job_id, _ in jobs:
                run = runs.get(job_id)
                if run is None:
                    if quiet[job_id] >= lease:
                        await self.transition(
                            job_id,
                            statemachine.FAILED,
                            "trainer lost the run",
                            f"trainer {address} no longer knows this job's run (was it restarted?)",
                        )
                    continue
                if run.state not in ENDED_RUN_STATES:
                    self._run_ended_at.pop(job_id, None)
                    continue
                ended = self._run_ended_at.setdefault(job_id, now)
                if now - ended >= lease and quiet[job_id] >= lease:
                    state = trainer_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_")
                    detail = run.error_message or f"exit code {run.exit_code}"
                    await self.transition(
                        job_id,
                        statemachine.FAILED,
                        "training process ended without a status",
                        f"the training process ended ({state}, {detail}) without reporting a final status",
                    )
