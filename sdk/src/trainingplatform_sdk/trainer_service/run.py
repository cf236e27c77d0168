"""One run of a trainer service: a training process and what the service knows of it.

What the service knows of a run is also kept in `<output_dir>/run.json` (mode 0600: it holds the job's telemetry
token, which the service needs to report the run's end after a restart), rewritten atomically on every change, so
a restarted service can adopt the runs its predecessor left (see `Supervisor.adopt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainingplatform.trainer.v1 import trainer_pb2

from trainingplatform_sdk.training.progress import read_progress

__all__ = ["LOG_FILE_NAME", "RUN_FILE_NAME", "Run", "describe_exit", "infer_exit", "process_start_time"]

_log = logging.getLogger(__name__)

LOG_FILE_NAME = "train.log"
"""The run's stdout and stderr, in its output directory."""
RUN_FILE_NAME = "run.json"
"""What the service knows of the run, in its output directory (mode 0600)."""
#: Fields of run.json: everything but the in-memory event.
_SAVED_FIELDS = (
    "run_id",
    "job_id",
    "framework",
    "sequence",
    "total_epochs",
    "start_time",
    "telemetry_endpoint",
    "telemetry_token",
    "state",
    "pid",
    "pid_start_time",
    "exit_code",
    "error_message",
    "end_time",
    "cancel_reason",
    "killed_after_grace",
    "reported",
)
#: The last lines `tp-train` writes to train.log, and the exit code each stands for (see training/train.py).
_FINAL_LINES = (("Training completed: ", 0), ("Training cancelled", 128 + signal.SIGTERM), ("Training failed: ", 1))


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
    framework: str = ""
    """The service's framework: a service adopts only its own runs (empty in a run.json from before it was saved)."""
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
    pid_start_time: int = 0
    """The process's start time (clock ticks after boot, /proc/<pid>/stat), which tells a reused pid apart."""
    reported: bool = False
    """True once the end of the run (spool, then status) was reported: nothing is left to do after a restart."""
    exited: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def save(self) -> None:
        """Writes run.json atomically with mode 0600; a failure is logged (the run goes on, unadoptable)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in _SAVED_FIELDS}
        data["state"] = int(self.state)
        path = self.output_dir / RUN_FILE_NAME
        temporary = path.with_name(f".{RUN_FILE_NAME}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as error:
            _log.error("cannot save %s: %s; a restarted service will not know run %s", path, error, self.run_id)
            with contextlib.suppress(OSError):
                temporary.unlink()

    @classmethod
    def load(cls, path: Path) -> Run | None:
        """The run saved in `path` (a run.json); None when it is unreadable (logged)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            fields = {name: data[name] for name in _SAVED_FIELDS if name in data}
            fields["state"] = trainer_pb2.RunState.Value(trainer_pb2.RunState.Name(int(fields["state"])))
            return cls(output_dir=path.parent, **fields)
        except (OSError, ValueError, TypeError, KeyError) as error:
            _log.warning("ignoring %s: %s", path, error)
            return None

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


def process_start_time(pid: int) -> int | None:
    """The start time of a live process (clock ticks after boot); None when it is gone or a zombie."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)", which may hold spaces and parentheses
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5)


def infer_exit(output_dir: Path) -> int | None:
    """The exit code of a training process that was not the service's child, from the final line `tp-train`
    wrote to train.log (0, 1 or 143); None when it wrote none (killed, or crashed without a word)."""
    try:
        with (output_dir / LOG_FILE_NAME).open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 256 * 1024))
            tail = file.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    found: tuple[int, int | None] = (-1, None)
    for marker, code in _FINAL_LINES:
        position = tail.rfind(marker)
        if position > found[0]:
            found = (position, code)
    return found[1]


def describe_exit(returncode: int | None, output_dir: Path) -> str:
    """Why a run failed, from its exit code: the signal that killed it, or the code and where its log is."""
    if returncode is None:
        return (
            "the training process ended while the trainer service was down or restarting, without a final status "
            f"(its exit code is unknown: killed, or out of memory?); see {output_dir / LOG_FILE_NAME}"
        )
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        hint = ": out of memory, or killed from outside the service" if -returncode == signal.SIGKILL else ""
        return f"training process killed by signal {-returncode} ({name}){hint}"
    return f"training process exited with code {returncode}; see {output_dir / LOG_FILE_NAME}"
