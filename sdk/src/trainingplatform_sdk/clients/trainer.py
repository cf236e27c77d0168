"""The typed client of a trainer service's TrainerService (internal token only)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from trainingplatform.common.v1 import common_pb2
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

from trainingplatform_sdk.clients._base import Client


@dataclass(frozen=True)
class TrainingRun:
    """A run as a trainer service reports it."""

    run_id: str
    job_id: str
    state: str
    """`STARTING`, `RUNNING`, `SUCCEEDED`, `FAILED` or `CANCELLED`."""
    pid: int
    current_epoch: int
    total_epochs: int
    latest_metrics: dict[str, float]
    exit_code: int
    error_message: str
    output_dir: str


@dataclass(frozen=True)
class Capabilities:
    """What a trainer service can train."""

    framework: str
    tasks: tuple[str, ...]
    models: tuple[str, ...]
    devices: tuple[str, ...]
    builtin_datasets: tuple[str, ...]
    max_concurrent_jobs: int


def _run(run: trainer_pb2.TrainingRun) -> TrainingRun:
    return TrainingRun(
        run.run_id,
        run.job_id,
        trainer_pb2.RunState.Name(run.state).removeprefix("RUN_STATE_"),
        run.pid,
        run.current_epoch,
        run.total_epochs,
        dict(run.latest_metrics),
        run.exit_code,
        run.error_message,
        run.output_dir,
    )


class TrainerClient(Client):
    """A trainer service's TrainerService (internal token only)."""

    def __init__(self, address: str, token: str, **kwargs: Any) -> None:
        """Args: as JobsClient; `token` is the internal service token."""
        super().__init__(address, token, **kwargs)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def capabilities(self) -> Capabilities:
        """What the service trains."""
        c = self._call(self._stub.GetCapabilities, trainer_pb2.GetCapabilitiesRequest())
        return Capabilities(
            c.framework,
            tuple(c.tasks),
            tuple(c.models),
            tuple(c.devices),
            tuple(c.builtin_datasets),
            c.max_concurrent_jobs,
        )

    def start_training(
        self, job_id: str, spec: common_pb2.JobSpec, *, telemetry_endpoint: str = "", telemetry_token: str = ""
    ) -> str:
        """Starts a run; returns its run id."""
        request = trainer_pb2.StartTrainingRequest(
            job_id=job_id, spec=spec, telemetry_endpoint=telemetry_endpoint, telemetry_token=telemetry_token
        )
        response: trainer_pb2.StartTrainingResponse = self._call(self._stub.StartTraining, request)
        return response.run_id

    def get_training(self, *, run_id: str = "", job_id: str = "") -> TrainingRun:
        """One run, by run id or job id."""
        return _run(
            self._call(self._stub.GetTraining, trainer_pb2.GetTrainingRequest(run_id=run_id, job_id=job_id)).run
        )

    def list_trainings(self) -> Iterator[TrainingRun]:
        """Every run the service knows, newest first."""
        token = ""
        while True:
            page = self._call(self._stub.ListTrainings, trainer_pb2.ListTrainingsRequest(page_token=token))
            yield from (_run(r) for r in page.runs)
            token = page.next_page_token
            if not token:
                return

    def cancel_training(self, *, run_id: str = "", job_id: str = "", grace_period_s: int = 0) -> TrainingRun:
        """Stops a run (SIGTERM, then SIGKILL after the grace period)."""
        return _run(
            self._call(
                self._stub.CancelTraining,
                trainer_pb2.CancelTrainingRequest(run_id=run_id, job_id=job_id, grace_period_seconds=grace_period_s),
            ).run
        )
