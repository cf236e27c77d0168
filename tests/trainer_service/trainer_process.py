"""A real trainer service for tests: `tp-trainer-timm` started on a free loopback port, with a client for it."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import BackendProcess, auth, free_port
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2, trainer_pb2_grpc

VENV_BIN = Path(sys.executable).parent
TESTS_DIR = Path(__file__).resolve().parent.parent
FAKE_ADAPTER = "trainer_service.fake_adapter:FakeAdapter"
TERMINAL_STATES = (trainer_pb2.RUN_STATE_SUCCEEDED, trainer_pb2.RUN_STATE_FAILED, trainer_pb2.RUN_STATE_CANCELLED)


def wait_until(condition: Callable[[], object], timeout: float = 120, what: str = "condition") -> object:
    """Polls `condition` until it returns something truthy, which is returned; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def spec(
    *,
    framework: str = "timm",
    model: str = "resnet10t",
    dataset: str = "digits",
    path: str = "",
    epochs: int = 1,
    image_size: int = 32,
    extra: dict[str, object] | None = None,
) -> common_pb2.JobSpec:
    """A job specification with small defaults."""
    message = common_pb2.JobSpec(
        framework=framework,
        model=common_pb2.ModelConfig(name=model, image_size=image_size),
        dataset=common_pb2.DatasetConfig(name=dataset, path=path),
        training=common_pb2.TrainingConfig(epochs=epochs, device="cpu"),
    )
    if extra:
        message.advanced.extra.update(extra)
    return message


def mlflow_run_ended(trainer: TrainerProcess, backend: BackendProcess, job_id: str, status: str) -> dict[str, str]:
    """Waits until the job's MLflow run, in the trainer's local store, shows `status`; returns the run's tags."""
    from mlflow import MlflowClient

    job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.internal_token)).job
    assert job.mlflow_run_id, "the training process reported no MLflow run"
    client = MlflowClient(f"sqlite:///{Path(trainer.data_dir).absolute() / 'mlflow.db'}")
    wait_until(
        lambda: client.get_run(job.mlflow_run_id).info.status == status, 60, f"the MLflow run of {job_id} {status}"
    )
    return client.get_run(job.mlflow_run_id).data.tags


class TrainerProcess:
    """A `tp-trainer-timm` subprocess with its own data directory and token, and a client for it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        executable: str = "tp-trainer-timm",
        flags: bool = False,
        cwd: Path | None = None,
    ) -> None:
        """`flags`: give the data directory and the data roots as `--data-dir` and `--data-roots` (relative to
        `cwd`, the service's working directory, when `data_dir` is), with TP_DATA_DIR and TP_DATA_ROOTS unset."""
        self.data_dir = data_dir
        self.executable = executable
        self.flags = flags
        self.cwd = cwd
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(24)
        self.log_path = (cwd or Path.cwd()) / data_dir / "trainer.log"
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.channel = grpc.insecure_channel(self.address)
        self.stub = trainer_pb2_grpc.TrainerServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {self.token}"),)

    def start(self, timeout: float = 120) -> TrainerProcess:
        """Starts the service and waits until its health check answers SERVING."""
        where = (self.cwd or Path.cwd()) / self.data_dir
        where.mkdir(parents=True, exist_ok=True)
        # Dataset paths must lie under the data roots: the tests' temporary directories sit beside data_dir.
        data_settings = {"TP_DATA_DIR": str(self.data_dir), "TP_DATA_ROOTS": str(where.parent)}
        env = {
            **{key: value for key, value in os.environ.items() if key not in data_settings},
            "INTERNAL_AUTH_TOKEN": self.token,
            **({} if self.flags else data_settings),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])),
            **self.extra_env,
        }
        command = [str(VENV_BIN / self.executable), "--listen", self.address]
        if self.flags:
            command += ["--data-dir", data_settings["TP_DATA_DIR"], "--data-roots", data_settings["TP_DATA_ROOTS"]]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        health = health_pb2_grpc.HealthStub(self.channel)

        def serving() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"trainer exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return False
            return status == health_pb2.HealthCheckResponse.SERVING

        wait_until(serving, timeout, "the trainer service to serve")
        return self

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                raise
        return self.process.returncode

    def close(self) -> None:
        """Stops the service (which stops its runs) and closes the channel."""
        if self.process is not None:
            with contextlib.suppress(Exception):
                self.stop()
        self.channel.close()

    def log_text(self) -> str:
        """What the service wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- calls ---------------------------------------------------------------------------------------------

    def start_training(
        self, job_id: str, job_spec: common_pb2.JobSpec, endpoint: str = "", telemetry_token: str = ""
    ) -> str:
        """StartTraining; returns the run id."""
        request = trainer_pb2.StartTrainingRequest(
            job_id=job_id, spec=job_spec, telemetry_endpoint=endpoint, telemetry_token=telemetry_token
        )
        return self.stub.StartTraining(request, metadata=self.metadata, timeout=60).run_id

    def get(self, run_id: str = "", job_id: str = "") -> trainer_pb2.TrainingRun:
        """GetTraining."""
        request = trainer_pb2.GetTrainingRequest(run_id=run_id, job_id=job_id)
        return self.stub.GetTraining(request, metadata=self.metadata, timeout=10).run

    def cancel(self, run_id: str, grace: int = 0) -> trainer_pb2.TrainingRun:
        """CancelTraining."""
        request = trainer_pb2.CancelTrainingRequest(run_id=run_id, grace_period_seconds=grace)
        return self.stub.CancelTraining(request, metadata=self.metadata, timeout=10).run

    def list_all(self) -> list[trainer_pb2.TrainingRun]:
        """Every run, newest first, following page tokens."""
        runs: list[trainer_pb2.TrainingRun] = []
        token = ""
        while True:
            page = self.stub.ListTrainings(
                trainer_pb2.ListTrainingsRequest(page_size=100, page_token=token), metadata=self.metadata, timeout=10
            )
            runs.extend(page.runs)
            token = page.next_page_token
            if not token:
                return runs

    def wait_state(self, run_id: str, *states: int, timeout: float = 120) -> trainer_pb2.TrainingRun:
        """Polls GetTraining until the run is in one of `states`; fails early when it ends in another."""

        def reached() -> trainer_pb2.TrainingRun | None:
            run = self.get(run_id)
            if run.state in states:
                return run
            if run.state in TERMINAL_STATES:
                raise AssertionError(
                    f"run ended {trainer_pb2.RunState.Name(run.state)} ({run.error_message}), expected "
                    f"{[trainer_pb2.RunState.Name(s) for s in states]}; train.log:\n{self.train_log(run)[-3000:]}"
                )
            return None

        names = [trainer_pb2.RunState.Name(state) for state in states]
        return wait_until(reached, timeout, f"run {run_id} to reach {names}")  # type: ignore[return-value]

    @staticmethod
    def train_log(run: trainer_pb2.TrainingRun) -> str:
        """The run's train.log."""
        path = Path(run.output_dir) / "train.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all_runs(self) -> None:
        """Cancels every live run (1 s grace) and waits until all have ended."""
        for run in self.list_all():
            if run.state not in TERMINAL_STATES:
                self.cancel(run.run_id, grace=1)
        wait_until(
            lambda: all(run.state in TERMINAL_STATES for run in self.list_all()), 60, "every run of the trainer to end"
        )


def refused_start(trainer: TrainerProcess, job_id: str, job_spec: common_pb2.JobSpec, *, validate_only: bool) -> str:
    """StartTraining's INVALID_ARGUMENT message for `job_spec`; asserts that nothing started."""
    request = trainer_pb2.StartTrainingRequest(job_id=job_id, spec=job_spec, validate_only=validate_only)
    with pytest.raises(grpc.RpcError) as caught:
        trainer.stub.StartTraining(request, metadata=trainer.metadata, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert not any(run.job_id == job_id for run in trainer.list_all())
    assert not (trainer.data_dir / "runs" / job_id).exists()
    return caught.value.details()
