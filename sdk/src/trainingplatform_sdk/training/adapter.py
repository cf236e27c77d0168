"""The TrainingAdapter base class: what a framework fills in to train on the platform.

A framework adapter is one file with one subclass. For a framework whose loop we write (timm), fill in the hooks
and let the default `fit()` run the loop:

    class MyAdapter(TrainingAdapter):
        framework = "mine"
        best_metric = "val/accuracy"

        def build_data(self) -> None: ...                       # called first: the model may need the classes
        def build_model(self) -> None: ...
        def train_epoch(self, epoch: int) -> MetricsResult: ...  # check self.stop_requested between batches
        def validate(self, epoch: int) -> MetricsResult: ...
        def save_checkpoint(self, epoch: int, is_best: bool) -> Path: ...

For a framework that owns its loop (ultralytics), override `fit()` instead and report through `self.logger`.
`train()` is what callers run: it validates, warns about advanced options the adapter does not use, and calls
`fit()`. Job status (RUNNING, COMPLETED, ...) is reported by whoever runs the adapter — the training entry point
(`trainingplatform_sdk.train`) — not by the adapter: it owns the process, its signals and its exit code.

This module imports nothing heavy: the SDK installs without torch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from trainingplatform_sdk.spec.configs import AdvancedConfig, DatasetConfig, MetricsResult, ModelConfig, TrainingConfig

__all__ = ["NullSink", "Status", "TelemetrySink", "TrainingAdapter", "TrainingResult", "loader_worker_init"]

_log = logging.getLogger(__name__)


class Status(StrEnum):
    """Job status values a trainer reports (the strings `TelemetrySink.update_status` takes)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@runtime_checkable
class TelemetrySink(Protocol):
    """Where an adapter reports: the SDK's `TrainingLogger` implements it, `NullSink` discards everything.

    Epochs are 0-based; `step` is the global optimizer step. Calls must be cheap: they run on the training thread.
    """

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Records one metric value."""
        ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Records several metric values at the same step and epoch."""
        ...

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        """Records one log line (`level`: DEBUG, INFO, WARNING, ERROR or CRITICAL)."""
        ...

    def update_status(
        self,
        status: str,
        error: str | None = None,
        *,
        error_detail: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Reports a job status change; `error` and `error_detail` (a traceback) go with `failed`."""
        ...

    def log_epoch_summary(
        self, epoch: int, metrics: Mapping[str, float], duration_seconds: float | None = None
    ) -> None:
        """Records the summary of a finished epoch."""
        ...

    def report_run_info(
        self,
        *,
        mlflow_run_id: str | None = None,
        mlflow_tracking_uri: str | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        """Reports where the run is tracked and stored; `artifacts` maps names to URIs."""
        ...

    def flush(self, timeout: float | None = None) -> Any:
        """Waits until everything recorded so far is delivered or `timeout` passes."""
        ...

    def close(self, timeout: float | None = None) -> Any:
        """Flushes and releases the sink."""
        ...


class NullSink:
    """A TelemetrySink that discards everything: the adapter's logger when none is given."""

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Discards the value."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Discards the values."""

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        """Discards the line."""

    def update_status(
        self,
        status: str,
        error: str | None = None,
        *,
        error_detail: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Discards the status."""

    def log_epoch_summary(
        self, epoch: int, metrics: Mapping[str, float], duration_seconds: float | None = None
    ) -> None:
        """Discards the summary."""

    def report_run_info(
        self,
        *,
        mlflow_run_id: str | None = None,
        mlflow_tracking_uri: str | None = None,
        artifacts: Mapping[str, str] | None = None,
    ) -> None:
        """Discards the information."""

    def flush(self, timeout: float | None = None) -> None:
        """Nothing to flush."""

    def close(self, timeout: float | None = None) -> None:
        """Nothing to close."""


@dataclass
class TrainingResult:
    """How a training run ended."""

    status: Status
    """`Status.COMPLETED`, or `Status.CANCELLED` when a stop was requested."""
    epochs_completed: int
    """Epochs trained and validated to the end."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The last completed epoch's metrics."""
    best_epoch: int | None = None
    """The epoch with the best `best_metric`, None when no epoch completed."""
    best_value: float | None = None
    """The best value of `best_metric`."""
    best_checkpoint: Path | None = None
    """The best checkpoint, None when none was written."""
    last_checkpoint: Path | None = None
    """The last checkpoint, None when none was written."""


class TrainingAdapter:
    """Base class of framework adapters. See the module docstring for what a subclass fills in.

    Args:
        model_config: Which model to train.
        dataset_config: Which data to train on.
        training_config: The loop settings.
        output_dir: Directory for checkpoints and framework files; created when missing.
        job_id: The backend's job id, recorded in checkpoints.
        logger: Where to report metrics and logs; None discards them.
        advanced_config: Optimizer, schedule, augmentation, ... None keeps every default.
    """

    #: Framework name, as in `JobSpec.framework`.
    framework: ClassVar[str] = ""
    #: The metric that picks the best checkpoint, and whether higher (`max`) or lower (`min`) is better.
    best_metric: ClassVar[str] = "val/accuracy"
    best_mode: ClassVar[Literal["max", "min"]] = "max"
    #: `advanced_config.extra` keys this adapter uses; `train()` warns about every other one.
    supported_extra_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        model_config: ModelConfig,
        dataset_config: DatasetConfig,
        training_config: TrainingConfig,
        output_dir: str | Path,
        job_id: str,
        logger: TelemetrySink | None = None,
        advanced_config: AdvancedConfig | None = None,
    ) -> None:
        self.model_config = model_config
        self.dataset_config = dataset_config
        self.training_config = training_config
        self.advanced_config = advanced_config if advanced_config is not None else AdvancedConfig()
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.job_id = job_id
        self.logger: TelemetrySink = logger if logger is not None else NullSink()
        #: Optimizer steps taken so far: the `step` of reported metrics.
        self.global_step = 0
        #: The metrics of the epoch being finished, readable by `save_checkpoint`.
        self.epoch_metrics: dict[str, float] = {}
        # An Event, not a bool: request_stop() runs in a signal handler or another thread.
        self._stop = threading.Event()

    # --- Hooks a framework fills in -------------------------------------------------------------------------

    def check(self) -> None:
        """Validates the configs cheaply, before anything is built: model name known, dataset present.

        Raises:
            ValueError: A config value the framework cannot use (ConfigError is a ValueError).
            FileNotFoundError: The dataset or a local model file does not exist.
        """

    def build_data(self) -> None:
        """Builds the datasets and loaders. Called before `build_model`.

        A loader with workers takes `worker_init_fn=loader_worker_init`, so that a cancel stops the training at a
        batch boundary instead of killing its workers under it.
        """
        raise NotImplementedError

    def build_model(self) -> None:
        """Builds the model, the optimizer and the schedule."""
        raise NotImplementedError

    def train_epoch(self, epoch: int) -> MetricsResult:
        """Trains one epoch (0-based), counting `global_step` and checking `stop_requested` between batches."""
        raise NotImplementedError

    def validate(self, epoch: int) -> MetricsResult:
        """Evaluates on the validation data."""
        raise NotImplementedError

    def save_checkpoint(self, epoch: int, is_best: bool) -> Path:
        """Writes the last checkpoint (and the best one when `is_best`) and returns the last one's path."""
        raise NotImplementedError

    def accepted_extra_keys(self) -> Iterable[str]:
        """The `advanced_config.extra` keys this adapter uses; the default is `supported_extra_keys`."""
        return self.supported_extra_keys

    # --- Running --------------------------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once `request_stop()` was called."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Asks training to stop at the next batch boundary; safe from a signal handler or another thread."""
        self._stop.set()

    @property
    def checkpoint_dir(self) -> Path:
        """Where checkpoints go: `output_dir/weights`."""
        return self.output_dir / "weights"

    @property
    def last_checkpoint_path(self) -> Path:
        """The last checkpoint: `output_dir/weights/last.pt`."""
        return self.checkpoint_dir / "last.pt"

    @property
    def best_checkpoint_path(self) -> Path:
        """The best checkpoint: `output_dir/weights/best.pt`."""
        return self.checkpoint_dir / "best.pt"

    def log(self, message: str, level: str = "INFO", *, epoch: int | None = None, step: int | None = None) -> None:
        """Writes a line to the job's logs and to this process's `logging`."""
        _log.log(logging.getLevelName(level), message)
        self.logger.log_message(message, level=level, epoch=epoch, step=step)

    def warn_unused_options(self) -> list[str]:
        """Logs a WARNING line for each `advanced_config.extra` key this adapter does not use; returns them."""
        accepted = set(self.accepted_extra_keys())
        unused = [key for key in self.advanced_config.extra if key not in accepted]
        for key in unused:
            self.log(
                f"advanced_config: unknown key {key!r} is ignored by the {self.framework} trainer", level="WARNING"
            )
        return unused

    def train(self) -> TrainingResult:
        """Runs the training: `check()`, a warning per unused advanced option, then `fit()`.

        Returns:
            How the run ended: COMPLETED, or CANCELLED after `request_stop()`.

        Raises:
            Exception: Whatever the framework raised; the caller reports FAILED.
        """
        self.check()
        self.warn_unused_options()
        return self.fit()

    def fit(self) -> TrainingResult:
        """The default loop: per epoch train, validate, report the metrics and the summary, save checkpoints.

        Each epoch's metrics are logged with `step` = the global step at the epoch's end. A stop requested during
        an epoch ends it at the next batch; that partial epoch is checkpointed (as `last`) but not reported.
        """
        self.build_data()
        self.build_model()
        epochs = self.training_config.epochs
        result = TrainingResult(status=Status.COMPLETED, epochs_completed=0)
        for epoch in range(epochs):
            if self.stop_requested:
                break
            started = time.monotonic()
            trained = self.train_epoch(epoch)
            if trained.stopped:
                self.epoch_metrics = {}  # the partial epoch was not validated: its checkpoint carries no metrics
                result.last_checkpoint = self.save_checkpoint(epoch, is_best=False)
                self.log(
                    f"Stopped during epoch {epoch + 1}/{epochs} at step {self.global_step}",
                    epoch=epoch,
                    step=self.global_step,
                )
                break
            validated = self.validate(epoch)
            duration = time.monotonic() - started
            metrics = {**trained.metrics, **validated.metrics}
            metrics.setdefault("epoch_time_s", duration)
            self.epoch_metrics = metrics
            self.logger.log_metrics(metrics, step=self.global_step, epoch=epoch)

            value = metrics.get(self.best_metric)
            is_best = value is not None and (result.best_value is None or self._is_better(value, result.best_value))
            if is_best:
                result.best_epoch, result.best_value = epoch, value
            result.last_checkpoint = self.save_checkpoint(epoch, is_best=is_best)
            if is_best:
                result.best_checkpoint = self.best_checkpoint_path
            self.logger.log_epoch_summary(epoch, metrics, duration_seconds=duration)
            self.log(f"Epoch {epoch + 1}/{epochs}: " + _format_metrics(metrics), epoch=epoch, step=self.global_step)
            result.epochs_completed += 1
            result.metrics = metrics
        if self.stop_requested:
            result.status = Status.CANCELLED
        return result

    def _is_better(self, value: float, best: float) -> bool:
        return value > best if self.best_mode == "max" else value < best


def loader_worker_init(worker_id: int) -> None:
    """A DataLoader `worker_init_fn` that keeps the loader's worker processes out of the job's stop signals.

    A cancel sends SIGTERM to the run's whole process group (and torchrun to each rank's), Ctrl-C sends SIGINT to
    the terminal's. A loader worker killed by it makes torch raise "DataLoader worker (pid ...) is killed by
    signal" in the training process, at whatever line it runs, before the batch boundary where it would stop, save
    its last checkpoint and report CANCELLED. So the worker leaves that group for one of its own: the training
    process shuts it down as it stops (or terminates it, as torch and multiprocessing do), and torch ends a worker
    whose training process died within seconds (its watchdog), a SIGKILL of the group included.

    Args:
        worker_id: The worker's index, as DataLoader passes it (unused).
    """
    os.setpgid(0, 0)


def _format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{key}={value:.4g}" for key, value in metrics.items())
