"""The reporter lease: fails RUNNING jobs that no trainer runs once their reporter has fallen silent.

A job created with dispatch=false (`tp run`, a script of your own with a TrainingLogger) has no trainer service
whose runs the dispatcher's lease could ask about: only its reporter, the process holding its token, knows it
lives. Every telemetry call of that token (a stream message, GetStreamCursor, UpdateStatus, RecordEpochSummary,
ReportRunInfo) counts as word from it (`Backend.heard_from`, written to `jobs.reporter_seen_at` at most every
`contact_write_s` per job and backend process). The SDK's logger reads the cursor at least every
`LoggerSettings.heartbeat_interval_s` (30 s) while open, however quiet the training is.

Every `interval_s` each backend process fails the RUNNING jobs without a trainer whose reporter was last heard from
(or which started, never heard from) more than `timeout_s` ago: the process was killed (SIGKILL, the OOM killer, a
lost machine) before it reported a final status, and would otherwise leave its job RUNNING for good. A backend
process counts every job as heard from when it started, so an outage of the backends fails nothing: reporters get
`timeout_s` to come back; so does an outage of the database (a round that cannot read it counts every job as heard
from once it reads it again). A reporter that comes back after its job was failed has its status changes refused
(FAILED is final); its telemetry is still stored within the job token's grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable

from trainingplatform_backend import statemachine
from trainingplatform_backend.interceptors import RoundFailures
from trainingplatform_backend.store import Store, Transition, utcnow

#: Moves a job on: (job id, target status, reason, error message) -> the transition, None when it had moved on.
MoveJob = Callable[[str, str, str, str], Awaitable[Transition | None]]

log = logging.getLogger(__name__)

# Longest time between two writes of a job's reporter contact from one backend process: a reporter calling at least
# every 30 s is then seen at most 45 s late, well within the default timeout (300 s).
MAX_CONTACT_WRITE_S = 15.0


def contact_write_interval(timeout_s: float) -> float:
    """How often, at most, a backend process writes a job's reporter contact for `timeout_s` (0: never)."""
    return min(MAX_CONTACT_WRITE_S, timeout_s / 4) if timeout_s > 0 else 0.0


class ReporterLease:
    """Fails the RUNNING jobs without a trainer whose reporter was silent for `timeout_s`, every `interval_s`."""

    def __init__(self, store: Store, transition: MoveJob, *, timeout_s: float, interval_s: float) -> None:
        """`transition`: how the backend moves a job on by itself (`Dispatcher.transition`)."""
        self._store = store
        self._transition = transition
        self._timeout_s = timeout_s
        self._interval_s = interval_s
        self._started = math.inf
        self._database_lost = False
        self._failures = RoundFailures("reporter lease round", log)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the rounds in the background (none when the timeout is 0), once the server serves: every job
        counts as heard from then."""
        self._started = time.monotonic()
        if self._timeout_s > 0:
            self._task = asyncio.create_task(self._watch(), name="reporter-lease")

    async def stop(self) -> None:
        """Stops the rounds."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception as error:  # the database is away: the next round tries again
                self._failures.failed(error)
            else:
                self._failures.succeeded()

    async def check(self) -> list[str]:
        """One round: fails the jobs whose reporter is silent; returns their ids."""
        if time.monotonic() - self._started < self._timeout_s:
            return []  # every job counts as heard from when this process started serving, or its database came back
        now = utcnow()
        try:
            silent = await asyncio.to_thread(self._store.silent_reporters, now - dt.timedelta(seconds=self._timeout_s))
        except Exception:
            self._database_lost = True
            raise
        if self._database_lost:
            # The database was away: the reporters' calls could not be written meanwhile (they were refused, or
            # their contact writes failed), so every job counts as heard from now, as at the start.
            self._database_lost = False
            self._started = time.monotonic()
            log.info("reporter lease: the database is back; reporters get TP_REPORTER_TIMEOUT_S from now")
            return []
        failed = []
        for job_id, seen in silent:
            error = (
                f"no telemetry call from this job's reporter (`tp run`, or the process holding its token) for "
                f"{(now - seen).total_seconds():.0f} s (TP_REPORTER_TIMEOUT_S is {self._timeout_s:g} s): it ended "
                "without reporting a final status (killed?)"
            )
            transition = await self._transition(job_id, statemachine.FAILED, "reporter silent", error)
            if transition is not None and transition.changed:  # None: it reported a final status meanwhile
                log.warning("job %s: %s", job_id, error)
                failed.append(job_id)
        return failed
