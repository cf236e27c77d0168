"""Training processes: starting them, watching them end, stopping them, and what the service knows of each run.

Each run is a `tp-train` process in its own session (so its process group can be signalled as a whole, and a
crash or an OOM kill stays outside the service), writing to `<output_dir>/train.log`. Its data loader workers are
not in that group: they leave it for groups of their own (`training.adapter.loader_worker_init`), so a stop's
SIGTERM reaches only the training process, which shuts them down; when it dies instead (SIGKILL, OOM), torch's
watchdog in each worker ends it within seconds. The group's SIGKILL never reaches them.
One watcher task per run waits for its exit and decides the final state:

- exit 0: SUCCEEDED (the process reported COMPLETED itself);
- any other end after CancelTraining (or the service's shutdown): CANCELLED;
- any other end: FAILED, naming the exit code or the signal.

Then the service delivers whatever the process left in its spool (`<output_dir>/spool`: telemetry it could not
send before it exited, a backend outage for instance) by opening a TrainingLogger on that spool, which replays it
in order, retrying with backoff while the backend is unreachable or another process (a data loader worker of
the ended process) still holds the spool's lock (up to `reporting.SPOOL_REPLAY_MAX_S`). Only then does it
report the matching terminal status itself (COMPLETED, CANCELLED or FAILED with the exit code or signal): a killed
process could not, and the order matters: a status never overtakes the metrics logged before it. The backend's
state machine makes this safe when the process did report: repeating a status changes nothing, and a different
terminal status is refused with FAILED_PRECONDITION, which is ignored.

Every run is also saved in `<output_dir>/run.json` (`Run.save`, mode 0600) on each change: when it starts, when it
is asked to stop, when it ends, and once its end is reported. A service killed without its shutdown (SIGKILL, a
crash) leaves its training processes running, in their own sessions; the next service of the same framework on the
same runs directory adopts them on start (`adopt`). It first locks `<runs_dir>/.<framework>-service.lock` for as long
as it lives (flock, released however the process ends): a second service of the framework on the directory would
adopt the first one's live runs and stop them when it stops, so it is refused. Services of other frameworks may share
the directory (`tp up` runs them so) and leave each other's runs alone.

- a run whose process is still alive (same pid and same process start time, so a reused pid is not mistaken for
  it) is watched until it exits, polling every `ADOPTED_POLL_S`: it is no longer the service's child, so its exit
  code is read from the final line `tp-train` wrote to train.log. It can be cancelled like any run, counts
  towards the concurrency limit, and its end is reported like any other;
- a run whose process died while no service watched it ends FAILED (or CANCELLED when a stop was asked), unless
  its train.log ends with `tp-train`'s final line, and is reported;
- a run that ended without its end reported (the service died meanwhile) is reported now: its spool first, then
  its status;
- every other run is listed as it ended.

After the report, a run whose process exited without ending its MLflow run (killed after the cancel grace, by
the kernel's OOM killer, a crash; `recorder.RUN_FILE` says so) gets it ended KILLED, FAILED or FINISHED, to match
the run's state, by `python -m trainingplatform_sdk.training.abandoned_run` (a process of its own, with the training
process's environment, for up to TRACKING_END_TIMEOUT_S), so MLflow does not show it RUNNING for ever. A service
that died first does it for such runs when it starts again.

The service keeps knowing (GetTraining, ListTrainings) its live runs, the ended runs whose end is not reported yet,
and the last `TP_KEEP_ENDED_RUNS` ended runs whose end was reported; older ones are forgotten (their directories
stay), after a restart too, so memory and the backend's ListTrainings walk of each lease round stay bounded.

A shutdown waits REPORT_DRAIN_S for the reports of the runs that ended (a backend that does not take them would
otherwise hold it for as long as the spools' delivery is retried); a run still unreported then keeps its spool and
stays unreported, so the next start on the same data directory reports it (one WARNING names it).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import errno
import fcntl
import hmac
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
    quote,
)
from trainingplatform_sdk.trainer_service import metrics
from trainingplatform_sdk.trainer_service.framework import Catalog
from trainingplatform_sdk.trainer_service.job import JobRequest
from trainingplatform_sdk.trainer_service.reporting import report_end
from trainingplatform_sdk.trainer_service.run import (
    LOG_FILE_NAME,
    RUN_FILE_NAME,
    Run,
    describe_exit,
    infer_exit,
    process_start_time,
)
from trainingplatform_sdk.trainer_service.settings import TrainerSettings
from trainingplatform_sdk.trainer_service.validation import validate_job_id, validate_start
from trainingplatform_sdk.training.progress import STOP_REASON_FILE
from trainingplatform_sdk.training.recorder import run_left_open

__all__ = ["LOG_FILE_NAME", "Run", "Supervisor"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# Never handed to a training process: it runs arbitrary model code and needs only its job's telemetry token.
# The service's own credentials never reach model code; the run gets only its job's token.
_WITHHELD_ENV = (
    "INTERNAL_AUTH_TOKEN",
    "READ_AUTH_TOKEN",
    "FRONTEND_AUTH_TOKEN",
    "TP_AUTH_TOKEN",
    "BACKEND_API_URL",
    "JOB_TELEMETRY_TOKEN",
)
_CANCELLED_BY_REQUEST = "cancelled by CancelTraining"
_CANCELLED_BY_SHUTDOWN = "the trainer service shut down"
_SHUTTING_DOWN = "this trainer is shutting down; start the job on another trainer or retry later"
_SUPERSEDED = "superseded: the job was started again with another dispatch attempt's telemetry token"
#: Seconds between two checks of an adopted process, which is not the service's child.
ADOPTED_POLL_S = 0.2
#: How long a shutdown waits, once the runs have stopped, for their ends to be reported (spools first); what the
#: backend has not taken by then stays in the spools, and the next start of the service reports it.
REPORT_DRAIN_S = 10.0
#: How long the process that ends an abandoned MLflow run may take (MLflow's import, then two fail-fast requests).
TRACKING_END_TIMEOUT_S = 60.0
#: The MLflow status of a run's final state.
_MLFLOW_STATUS = {trainer_pb2.RUN_STATE_SUCCEEDED: "FINISHED", trainer_pb2.RUN_STATE_CANCELLED: "KILLED"}


class Supervisor:
    """Starts, watches and stops the training processes of one trainer service.

    Args:
        settings: The service's settings (data directory, concurrency limit, grace periods, adapter).
        catalog: The framework's models and devices, for validation.
    """

    def __init__(self, settings: TrainerSettings, catalog: Catalog) -> None:
        self._settings = settings
        self._catalog = catalog
        self._adapter = settings.adapter or catalog.description.framework
        # The runs the service knows: live ones, ended ones whose end is not reported yet, and the last
        # `keep_ended_runs` ended and reported (`_retire`). `_ordered` is sorted by sequence (ListTrainings' order).
        self._runs: dict[str, Run] = {}
        self._ordered: list[Run] = []
        self._retired: collections.deque[Run] = collections.deque()  # ended and reported, in the order they ended
        self._latest_by_job: dict[str, Run] = {}
        self._live: dict[str, Run] = {}
        self._sequence = itertools.count(1)
        # Serialises starts, so the idempotency and concurrency checks see every run started before.
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shutting_down = False
        self._stopping = asyncio.Event()  # set with `_shutting_down`: ends the submit checks in progress
        self._stop_reporting = threading.Event()  # set when a shutdown stops waiting for the reports
        self._lock_fd = -1

    # --- Adopting what a previous service left -------------------------------------------------------------------

    async def adopt(self) -> None:
        """Takes over the runs a previous service on the same runs directory left (see the module docstring).

        Call once, before serving.
        """
        framework = self._catalog.description.framework
        self._lock_fd = _claim_runs_dir(self._settings.runs_dir, framework)
        runs = await asyncio.to_thread(_load_runs, self._settings.runs_dir, framework)
        runs.sort(key=lambda run: (run.sequence, run.start_time))
        for run in runs:
            self._runs[run.run_id] = run
            self._ordered.append(run)
            self._latest_by_job[run.job_id] = run
        if runs:
            self._sequence = itertools.count(max(run.sequence for run in runs) + 1)
        for run in sorted((run for run in runs if not run.live and run.reported), key=_ended_at):
            self._retire(run)  # only the last `keep_ended_runs` to end are kept
        for run in runs:  # a forgotten run may still have its MLflow run to end (the last case)
            if run.live and run.pid_start_time and process_start_time(run.pid) == run.pid_start_time:
                self._live[run.run_id] = run
                self._spawn_task(self._watch_adopted(run))
                _log.info("adopted run %s of job %s: pid %d still training", run.run_id, run.job_id, run.pid)
            elif run.live:
                _log.warning(
                    "run %s of job %s: its process (pid %d) ended while no service watched it",
                    run.run_id,
                    run.job_id,
                    run.pid,
                )
                run.pid = 0  # gone: never signal a pid that may have been reused
                self._finish(run, infer_exit(run.output_dir))
                self._spawn_task(self._report_end(run))
            elif not run.reported:
                _log.info("run %s of job %s ended without its end reported: reporting it", run.run_id, run.job_id)
                self._spawn_task(self._report_end(run))
            elif run_left_open(run.output_dir):
                self._spawn_task(self._end_tracking(run))

    async def _watch_adopted(self, run: Run) -> None:
        while process_start_time(run.pid) == run.pid_start_time:
            await asyncio.sleep(ADOPTED_POLL_S)
        self._finish(run, infer_exit(run.output_dir))
        await self._report_end(run)

    # --- Queries ----------------------------------------------------------------------------------------------

    @property
    def live_count(self) -> int:
        """Processes not yet exited."""
        return len(self._live)

    @property
    def unreported_count(self) -> int:
        """Ended runs whose end (spool, then status) is still being reported to the backend."""
        return sum(1 for run in self._ordered if not run.live and not run.reported)

    def find(self, run_id: str, job_id: str) -> Run:
        """The run with `run_id`, else the latest run of `job_id` (its live run, when it has one).

        Raises:
            InvalidArgumentError: Neither id given.
            NotFoundError: No such run on this trainer.
        """
        if run_id:
            run = self._runs.get(run_id)
            if run is None or (job_id and run.job_id != job_id):
                raise NotFoundError(f"run {quote(run_id)} is not known to this trainer")
            return run
        if job_id:
            run = self._latest_by_job.get(job_id)
            if run is None:
                raise NotFoundError(f"job {quote(job_id)} has no run on this trainer")
            return run
        raise InvalidArgumentError("give run_id or job_id")

    def newest_first(self, before_sequence: int | None, limit: int) -> tuple[list[Run], int | None]:
        """Up to `limit` runs older than `before_sequence` (all when None), newest first, and the sequence to
        continue from (None on the last page). Costs O(log n + limit): a page never walks the other runs."""
        end = len(self._ordered)
        if before_sequence is not None:
            end = bisect.bisect_left(self._ordered, before_sequence, key=_sequence)
        start = max(0, end - limit)
        page = self._ordered[start:end][::-1]
        return page, (page[-1].sequence if start > 0 else None)

    # --- Starting ---------------------------------------------------------------------------------------------

    async def start(self, request: trainer_pb2.StartTrainingRequest) -> Run:
        """Validates the request and starts its process, or returns the job's live run when that run was started
        with the same telemetry endpoint and token (a retry of the same dispatch attempt).

        A job whose live run here is stopping (cancelled, superseded, shutting down) gets UNAVAILABLE until that
        run has exited: the dying run is never handed back as the one asked for. A live run started with another
        telemetry endpoint or token belongs to another dispatch attempt of the job, whose token the backend fences
        once the job went elsewhere: it is stopped (TP_CANCEL_GRACE_S) and the call answers UNAVAILABLE, so the
        caller's retry starts a run of its own once the old one has exited.

        Raises:
            PlatformError: INVALID_ARGUMENT or NOT_FOUND from validation; RESOURCE_EXHAUSTED at the concurrency
                limit; UNAVAILABLE while shutting down, while the job's previous run here is stopping, and when
                this host cannot start the process (a full disk, too many open files, permissions).
        """
        validate_job_id(request.job_id)
        async with self._start_lock:
            if self._shutting_down:
                raise UnavailableError(_SHUTTING_DOWN)
            live = self._live_run(request.job_id)
            if live is not None:
                if not live.cancel_reason and _same_attempt(live, request):
                    return live
                if not live.cancel_reason:
                    self._stop(live, self._settings.cancel_grace_s, _SUPERSEDED)
                raise UnavailableError(
                    f"run {live.run_id} of job {quote(request.job_id)} on this trainer is stopping; retry once it "
                    "has ended"
                    + ("" if live.cancel_reason != _SUPERSEDED else " (it was started by another dispatch attempt)")
                )
            job = await self.validate(request)
            if len(self._live) >= self._settings.max_concurrent_jobs:
                metrics.REFUSED_STARTS.labels(self._catalog.description.framework).inc()
                raise ResourceExhaustedError(
                    f"this trainer already runs {len(self._live)} of its {self._settings.max_concurrent_jobs} "
                    "concurrent job(s) and keeps no queue; retry later or use another trainer"
                )
            return await self._spawn(job)

    async def validate(self, request: trainer_pb2.StartTrainingRequest) -> JobRequest:
        """StartTraining's checks (`validate_start`), in a daemon thread: they may walk a large data set for
        minutes, and a shutdown does not wait for them. Once it begins, the call answers UNAVAILABLE at once and the
        thread's result is dropped; being a daemon, the thread does not keep the process from exiting.

        Raises:
            PlatformError: The checks' refusal; UNAVAILABLE when the service is (or starts) shutting down.
        """
        if self._shutting_down:
            raise UnavailableError(_SHUTTING_DOWN)
        check = _in_daemon_thread(validate_start, request, self._catalog)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((check, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not check.done():  # a shutdown, or the call was cancelled: the thread's result goes nowhere
                check.cancel()
        if check.cancelled():
            raise UnavailableError(_SHUTTING_DOWN)
        return check.result()

    async def _spawn(self, job: JobRequest) -> Run:
        run_id = uuid.uuid4().hex
        output_dir = (self._settings.runs_dir / job.job_id / run_id).absolute()
        run = Run(
            run_id=run_id,
            job_id=job.job_id,
            sequence=next(self._sequence),
            output_dir=output_dir,
            total_epochs=job.training.epochs,
            start_time=time.time(),
            telemetry_endpoint=job.telemetry_endpoint,
            telemetry_token=job.telemetry_token,
            framework=self._catalog.description.framework,
        )
        command = [
            sys.executable,
            "-m",
            "trainingplatform_sdk.training.train",
            "--job-id",
            job.job_id,
            "--framework",
            self._adapter,
            "--model-config",
            json.dumps(job.model.to_dict()),
            "--dataset-config",
            json.dumps(job.dataset.to_dict()),
            "--training-config",
            json.dumps(job.training.to_dict()),
            "--advanced-config",
            json.dumps(job.advanced.to_dict()),
            "--output-dir",
            str(output_dir),
        ]
        try:
            output_dir.mkdir(parents=True)
            with (output_dir / LOG_FILE_NAME).open("ab") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    # The run directory, so framework files written to the working directory stay with the run.
                    cwd=output_dir,
                    env=_child_env(job, self._settings),
                    # Its own session and process group: a signal to the service's group (Ctrl-C) doesn't reach it,
                    # and the service's stop signals reach it and what it starts, not its data loader workers (see
                    # the module docstring).
                    start_new_session=True,
                )
        except OSError as error:
            # Nothing of the job's own makes these fail (its id is checked): a full disk (ENOSPC), too many open
            # files (EMFILE), permissions, a broken data directory are this host's, and another replica may run
            # the job: UNAVAILABLE, which the backend retries (elsewhere first), not a refusal of the job.
            name = errno.errorcode.get(error.errno) if error.errno is not None else None
            cause = f"{error.strerror or error}" + (f" ({name})" if name else "")
            _log.error("cannot start the training process of job %s in %s: %s", job.job_id, output_dir, cause)
            raise UnavailableError(
                f"this trainer cannot start the training process in {output_dir}: {cause}; a problem of this "
                "trainer's host, not the job: check its data directory (TP_DATA_DIR: free space, permissions) and "
                "its open-file limit, or run the job on another trainer"
            ) from None
        run.pid = process.pid
        run.pid_start_time = process_start_time(process.pid) or 0
        run.save()
        self._runs[run_id] = run
        self._ordered.append(run)
        self._latest_by_job[job.job_id] = run
        self._live[run_id] = run
        self._spawn_task(self._watch(run, process))
        metrics.STARTED.labels(self._catalog.description.framework).inc()
        _log.info("started run %s of job %s: pid %d, output %s", run_id, job.job_id, process.pid, output_dir)
        return run

    def _live_run(self, job_id: str) -> Run | None:
        run = self._latest_by_job.get(job_id)
        return run if run is not None and run.live else None

    # --- Stopping ---------------------------------------------------------------------------------------------

    def cancel(self, run: Run, grace_s: float | None = None) -> Run:
        """Asks the run's process group to stop (SIGTERM) and kills it (SIGKILL) after the grace period.

        A run already stopping or ended is returned unchanged. The run becomes CANCELLED when its process exits.

        Args:
            run: The run.
            grace_s: Seconds between SIGTERM and SIGKILL; None means TP_CANCEL_GRACE_S.
        """
        if run.live and not run.cancel_reason:
            self._stop(run, self._settings.cancel_grace_s if grace_s is None else grace_s, _CANCELLED_BY_REQUEST)
        return run

    def _stop(self, run: Run, grace_s: float, reason: str) -> None:
        run.cancel_reason = reason
        run.save()
        _log.info(
            "stopping run %s of job %s (%s): SIGTERM, SIGKILL after %.0fs", run.run_id, run.job_id, reason, grace_s
        )
        try:  # the job's CANCELLED status says why (tp-train reads it); without it, only that it was asked to stop
            (run.output_dir / STOP_REASON_FILE).write_text(reason + "\n", encoding="utf-8")
        except OSError as error:
            _log.warning("cannot write the stop reason of run %s: %s", run.run_id, error)
        _signal_group(run, signal.SIGTERM)
        self._spawn_task(self._kill_after(run, grace_s))

    async def _kill_after(self, run: Run, grace_s: float) -> None:
        try:
            await asyncio.wait_for(run.exited.wait(), grace_s)
        except TimeoutError:
            run.killed_after_grace = True
            _log.warning("run %s did not stop within %.0fs of SIGTERM: SIGKILL", run.run_id, grace_s)
            _signal_group(run, signal.SIGKILL)

    async def shutdown(self) -> None:
        """Refuses new starts, stops every live run (SIGTERM, SIGKILL after TP_CANCEL_GRACE_S), waits for the
        processes to exit and for the status reports to the backend."""
        self._shutting_down = True
        self._stopping.set()  # a start still checking its request answers UNAVAILABLE at once
        async with self._start_lock:  # a start past its checks finishes first, and its run is stopped too
            live = list(self._live.values())
        for run in live:
            if not run.cancel_reason:
                self._stop(run, self._settings.cancel_grace_s, _CANCELLED_BY_SHUTDOWN)
        await asyncio.gather(*(run.exited.wait() for run in live))
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=REPORT_DRAIN_S)
            if pending:  # a backend that does not take them: the next start of this service reports them
                self._stop_reporting.set()
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)

    # --- Watching ---------------------------------------------------------------------------------------------

    async def _watch(self, run: Run, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        self._finish(run, returncode)
        await self._report_end(run)

    async def _report_end(self, run: Run) -> None:
        if run.telemetry_endpoint:
            try:
                reported = await report_end(run, self._stop_reporting)
            except asyncio.CancelledError:
                reported = False
            if not reported:
                _log.warning(
                    "run %s of job %s: its end is not reported yet (the backend did not take it within %.0f s of the "
                    "shutdown); it is kept for the next start of this service",
                    run.run_id,
                    run.job_id,
                    REPORT_DRAIN_S,
                )
                return
        run.reported = True
        run.save()
        self._retire(run)
        await self._end_tracking(run)

    def _retire(self, run: Run) -> None:
        """Counts `run` (ended, its end reported) among the kept ended runs, and forgets the ones that ended
        earliest beyond `keep_ended_runs`: nothing is left to do for them, and the backend's lease only asks about
        the runs of live jobs (their live runs, or ended ones until reported). Their run directories stay."""
        self._retired.append(run)
        while len(self._retired) > self._settings.keep_ended_runs:
            self._forget(self._retired.popleft())

    def _forget(self, run: Run) -> None:
        if self._runs.pop(run.run_id, None) is None:
            return
        index = bisect.bisect_left(self._ordered, run.sequence, key=_sequence)
        while index < len(self._ordered) and self._ordered[index] is not run:  # equal sequences: rare
            index += 1
        if index < len(self._ordered):
            del self._ordered[index]
        if self._latest_by_job.get(run.job_id) is run:
            del self._latest_by_job[run.job_id]

    async def _end_tracking(self, run: Run) -> None:
        """Ends the run's MLflow run when its process exited without ending it (see the module docstring)."""
        if not await asyncio.to_thread(run_left_open, run.output_dir):
            return
        status = _MLFLOW_STATUS.get(run.state, "FAILED")
        reason = run.cancel_reason or run.error_message or f"exit code {run.exit_code}"
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trainingplatform_sdk.training.abandoned_run",
            str(run.output_dir.absolute()),
            status,
            reason,
            env=_training_env(self._settings),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), TRACKING_END_TIMEOUT_S)
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            _log.warning(
                "run %s of job %s: its MLflow run is left RUNNING (ending it took over %.0f s)",
                run.run_id,
                run.job_id,
                TRACKING_END_TIMEOUT_S,
            )
            return
        text = output.decode(errors="replace").strip()
        if process.returncode != 0:
            _log.warning("run %s of job %s: %s", run.run_id, run.job_id, text or f"exit code {process.returncode}")
        elif text:
            _log.info("run %s of job %s: %s", run.run_id, run.job_id, text)

    def _finish(self, run: Run, returncode: int | None) -> None:
        """Records the end of the run's process; `returncode` None: unknown (a process adopted after a restart
        that wrote no final line)."""
        run.refresh()
        # Whatever the process started that stayed in its group goes with it. Not its data loader workers: they
        # left the group (loader_worker_init), and torch's watchdog ends them once the process is gone.
        _signal_group(run, signal.SIGKILL)
        run.pid = 0
        run.exit_code = 1 if returncode is None else returncode
        run.end_time = time.time()
        if returncode == 0:
            run.state = trainer_pb2.RUN_STATE_SUCCEEDED
        elif run.cancel_reason:
            run.state = trainer_pb2.RUN_STATE_CANCELLED
        else:
            run.state = trainer_pb2.RUN_STATE_FAILED
            run.error_message = describe_exit(returncode, run.output_dir)
        self._live.pop(run.run_id, None)
        run.save()
        run.exited.set()
        metrics.ENDED.labels(self._catalog.description.framework, _state_label(run.state)).inc()
        _log.info(
            "run %s of job %s ended %s (exit code %s)",
            run.run_id,
            run.job_id,
            trainer_pb2.RunState.Name(run.state),
            "unknown" if returncode is None else returncode,
        )

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _log.error("a supervisor task failed", exc_info=task.exception())


def _in_daemon_thread(function: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """`function(*args)` in a new daemon thread, as a future of the running loop. Cancelling the future does not
    stop the thread: its result is dropped, and the process may exit before it ends (unlike `asyncio.to_thread`,
    whose executor's threads the interpreter waits for at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = function(*args), None
        except BaseException as raised:  # handed to the awaiting coroutine
            result, error = None, raised
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=f"tp-{getattr(function, '__name__', 'check')}", daemon=True).start()
    return future


def _sequence(run: Run) -> int:
    return run.sequence


def _ended_at(run: Run) -> tuple[float, int]:
    return (run.end_time or 0.0, run.sequence)


def _same_attempt(run: Run, request: trainer_pb2.StartTrainingRequest) -> bool:
    """Whether `run` was started with the request's telemetry endpoint and token: the same dispatch attempt."""
    return run.telemetry_endpoint == request.telemetry_endpoint.strip() and hmac.compare_digest(
        run.telemetry_token.encode(), request.telemetry_token.encode()
    )


def _state_label(state: trainer_pb2.RunState) -> str:
    """`succeeded`, `failed` or `cancelled`: a run's final state as a metric label."""
    return trainer_pb2.RunState.Name(state).removeprefix("RUN_STATE_").lower()


def _claim_runs_dir(runs_dir: Path, framework: str) -> int:
    """Locks `<runs_dir>/.<framework>-service.lock` for the life of this process; returns the lock's descriptor.

    Close-on-exec: the training processes, which may outlive the service, never hold it.

    Raises:
        OSError: Another service of the framework holds it (its pid in the message), or the directory is unusable.
    """
    # The data directory, when this creates it, is private (0700) as `tp up` and the backend make theirs: it holds
    # every run's checkpoints, logs and telemetry spool.
    runs_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    runs_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(runs_dir / f".{framework}-service.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise OSError(
            f"another tp-trainer-{framework} (pid {holder}) serves the runs in {runs_dir.absolute()}: "
            "two services of a framework must never share one data directory (TP_DATA_DIR)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _load_runs(runs_dir: Path, framework: str) -> list[Run]:
    """Every run of `framework` saved under `<runs_dir>/<job_id>/<run_id>/run.json` (and those saved without one)."""
    runs = []
    for path in sorted(runs_dir.glob(f"*/*/{RUN_FILE_NAME}")):
        run = Run.load(path)
        if run is not None and run.framework in ("", framework):
            runs.append(run)
    return runs


def _child_env(job: JobRequest, settings: TrainerSettings) -> dict[str, str]:
    """The training process's environment: the service's, less the withheld variables, plus the job's telemetry
    and the service's settings the process reads (absolute, as its working directory is its run directory).

    A setting given as a flag (`--data-dir`) is not in the service's environment: without TP_DATA_DIR the
    process would take its output directory's parent for the data directory and put MLflow and the artifacts
    under `runs/<job_id>/` instead of `<data_dir>/`. TP_DATA_ROOTS is handed over too, so the process never sees
    an environment value the service overrode with `--data-roots`.
    """
    env = _training_env(settings)
    if job.telemetry_endpoint:
        env["BACKEND_API_URL"] = job.telemetry_endpoint
        env["JOB_TELEMETRY_TOKEN"] = job.telemetry_token
    return env


def _training_env(settings: TrainerSettings) -> dict[str, str]:
    """The environment of a training process without the job's telemetry: the service's, less the withheld
    variables, plus the settings the process reads (see `_child_env`)."""
    env = {key: value for key, value in os.environ.items() if key not in _WITHHELD_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # train.log shows progress as it happens
    env["TP_DATA_DIR"] = str(settings.data_dir.absolute())
    if settings.data_roots:
        env["TP_DATA_ROOTS"] = os.pathsep.join(str(root.absolute()) for root in settings.data_roots)
    return env


def _signal_group(run: Run, signum: signal.Signals) -> None:
    if run.pid <= 0:
        return
    # The process group id is the pid: the process leads its own session.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(run.pid, signum)
