"""A fake TrainerService in the test process: no training process, only the calls the backend makes, with
latency where a test wants it.

    with FakeTrainer(accept_delay_s=0.15, reply_delay_s=0.15) as trainer:
        backend = BackendProcess(url, data, extra_env={"TP_TRAINERS": f"timm={trainer.address}"})

StartTraining waits `accept_delay_s` (the request travelling), then accepts the job (a run that "keeps training"
until CancelTraining), then waits `reply_delay_s` (the response travelling) before it answers. A run is
`RUN_STATE_RUNNING` until it is cancelled or a test ends it with `finish()`. Every call is counted in `calls`.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from support.backend import free_port


@dataclass
class FakeRun:
    """One accepted StartTraining."""

    run_id: str
    job_id: str
    telemetry_token: str = field(repr=False)
    state: int = trainer_pb2.RUN_STATE_RUNNING
    accepted_at: float = 0.0

    def proto(self) -> trainer_pb2.TrainingRun:
        return trainer_pb2.TrainingRun(run_id=self.run_id, job_id=self.job_id, state=self.state)


class FakeTrainer(trainer_pb2_grpc.TrainerServiceServicer):
    """A TrainerService whose runs are entries in a dictionary."""

    def __init__(
        self,
        *,
        port: int | None = None,
        accept_delay_s: float = 0.0,
        reply_delay_s: float = 0.0,
        refuse: grpc.StatusCode | None = None,
        capacity: int | None = None,
    ) -> None:
        """`capacity`: runs it trains at once; past it StartTraining is RESOURCE_EXHAUSTED, like the real service's
        TP_MAX_CONCURRENT_JOBS (None: no limit)."""
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.accept_delay_s = accept_delay_s
        self.reply_delay_s = reply_delay_s
        self.refuse = refuse
        self.capacity = capacity
        self.runs: list[FakeRun] = []
        self.calls: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> FakeTrainer:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(self.address)
        self._server.start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None

    def __enter__(self) -> FakeTrainer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- what tests read ---------------------------------------------------------------------------------

    def runs_of(self, job_id: str) -> list[FakeRun]:
        with self._lock:
            return [run for run in self.runs if run.job_id == job_id]

    def training(self, job_id: str) -> list[FakeRun]:
        """The job's runs that still train."""
        return [run for run in self.runs_of(job_id) if run.state == trainer_pb2.RUN_STATE_RUNNING]

    def finish(self, job_id: str, state: int = trainer_pb2.RUN_STATE_SUCCEEDED) -> None:
        """Ends the job's live runs as if their processes exited."""
        with self._lock:
            for run in self.runs:
                if run.job_id == job_id and run.state == trainer_pb2.RUN_STATE_RUNNING:
                    run.state = state

    def _count(self, name: str) -> None:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def _live(self, job_id: str) -> FakeRun | None:
        for run in reversed(self.runs):
            if run.job_id == job_id and run.state == trainer_pb2.RUN_STATE_RUNNING:
                return run
        return None

    # --- the service -------------------------------------------------------------------------------------

    def StartTraining(
        self, request: trainer_pb2.StartTrainingRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.StartTrainingResponse:
        if request.validate_only:
            # CreateJob's check (StartTraining with validate_only): counted apart, starts nothing, always passes.
            self._count("ValidateTraining")
            return trainer_pb2.StartTrainingResponse()
        self._count("StartTraining")
        time.sleep(self.accept_delay_s)
        if self.refuse is not None:
            context.abort(self.refuse, "the fake trainer refuses")
        with self._lock:
            run = self._live(request.job_id)  # idempotent per job, like the real service
            live = sum(run.state == trainer_pb2.RUN_STATE_RUNNING for run in self.runs)
            if run is None and self.capacity is not None and live >= self.capacity:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this trainer already runs {live} of {live}")
            if run is None:
                run = FakeRun(f"run-{next(self._ids)}", request.job_id, request.telemetry_token)
                run.accepted_at = time.monotonic()
                self.runs.append(run)
        time.sleep(self.reply_delay_s)
        return trainer_pb2.StartTrainingResponse(run_id=run.run_id)

    def GetTraining(
        self, request: trainer_pb2.GetTrainingRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetTrainingResponse:
        self._count("GetTraining")
        with self._lock:
            for run in reversed(self.runs):
                if run.job_id == request.job_id or run.run_id == request.run_id:
                    return trainer_pb2.GetTrainingResponse(run=run.proto())
        context.abort(grpc.StatusCode.NOT_FOUND, "no such run")
        raise AssertionError  # unreachable

    def ListTrainings(
        self, request: trainer_pb2.ListTrainingsRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.ListTrainingsResponse:
        self._count("ListTrainings")
        with self._lock:
            return trainer_pb2.ListTrainingsResponse(runs=[run.proto() for run in reversed(self.runs)])

    def CancelTraining(
        self, request: trainer_pb2.CancelTrainingRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.CancelTrainingResponse:
        self._count("CancelTraining")
        time.sleep(self.accept_delay_s)
        with self._lock:
            for run in reversed(self.runs):
                if run.job_id == request.job_id or run.run_id == request.run_id:
                    if run.state == trainer_pb2.RUN_STATE_RUNNING:
                        run.state = trainer_pb2.RUN_STATE_CANCELLED
                    return trainer_pb2.CancelTrainingResponse(run=run.proto())
        context.abort(grpc.StatusCode.NOT_FOUND, "no such run")
        raise AssertionError  # unreachable

    def GetCapabilities(
        self, request: trainer_pb2.GetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> trainer_pb2.GetCapabilitiesResponse:
        self._count("GetCapabilities")
        return trainer_pb2.GetCapabilitiesResponse(framework="timm", max_concurrent_jobs=self.capacity or 0)
