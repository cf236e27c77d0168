"""One run of a trainer service: a training process and what the service knows of it."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.training.progress import read_progress

__all__ = ["LOG_FILE_NAME", "Run", "describe_exit"]

LOG_FILE_NAME = "train.log"
"""The run's stdout and stderr, in its output directory."""


@dataclass(eq=False)
class Run:
    """One training process and what the service knows of it."""

    run_id: str
    job_id: str
    sequence: int
    """Order of acceptance: ListTrainings' newest first and its page tokens."""
    output_dir: Path
    total_epochs: int
    start_time: float
    telemetry_endpoint: str = ""
    telemetry_token: str = field(default="", repr=False)
    state: trainer_pb2.RunState = trainer_pb2.RUN_STATE_STARTING
    pid: int = 0
    exit_code: int = 0
    error_message: str = ""
    end_time: float | None = None
    current_epoch: int = 0
    latest_metrics: dict[str, float] = field(default_factory=dict)
    cancel_reason: str = ""
    """Set once the run was asked to stop; the stop decides a non-zero exit is CANCELLED."""
    killed_after_grace: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def live(self) -> bool:
        """True until the process has exited."""
        return self.end_time is None

    def refresh(self) -> None:
        """Reads the process's progress file: epoch, metrics, and STARTING -> RUNNING once training began."""
        progress = read_progress(self.output_dir)
        if progress is None:
            return
        self.current_epoch = progress.epoch
        self.latest_metrics = progress.metrics
        if self.live and self.state == trainer_pb2.RUN_STATE_STARTING:
            self.state = trainer_pb2.RUN_STATE_RUNNING

    def to_proto(self) -> trainer_pb2.TrainingRun:
        """The run as the API returns it."""
        if self.live:
            self.refresh()
        message = trainer_pb2.TrainingRun(
            run_id=self.run_id,
            job_id=self.job_id,
            state=self.state,
            pid=self.pid,
            current_epoch=self.current_epoch,
            total_epochs=self.total_epochs,
            latest_metrics=self.latest_metrics,
            exit_code=self.exit_code,
            error_message=self.error_message,
            output_dir=str(self.output_dir),
        )
        message.start_time.FromNanoseconds(int(self.start_time * 1e9))
        if self.end_time is not None:
            message.end_time.FromNanoseconds(int(self.end_time * 1e9))
        return message


def describe_exit(returncode: int, output_dir: Path) -> str:
    """Why a run failed, from its exit code: the signal that killed it, or the code and where its log is."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        hint = ": out of memory, or killed from outside the service" if -returncode == signal.SIGKILL else ""
        return f"training process killed by signal {-returncode} ({name}){hint}"
    return f"training process exited with code {returncode}; see {output_dir / LOG_FILE_NAME}"
