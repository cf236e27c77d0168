"""Progress of a training process, shared with its trainer service through `<output_dir>/progress.json`.

The training process writes the file; the service reads it to answer GetTraining (current epoch, latest metrics):

    {"epoch": 2, "total_epochs": 10, "metrics": {"train/loss": 0.41}, "updated": 1760000000.0}

A file rather than a pipe or a socket: the process stays a plain command that runs the same with or without a
service around it, and a service restarted mid-run can still read it. Writes are atomic (a temporary file renamed
over the old one), so a reader never sees half a file.

The other way, a service that stops the process (SIGTERM) may first write why into `<output_dir>/stop_reason`
(`STOP_REASON_FILE`, one line): the process gives it as the reason of the job's CANCELLED status.

This module imports only the standard library: the training process loads it beside torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PROGRESS_FILE_NAME", "STOP_REASON_FILE", "Progress", "ProgressSink", "read_progress", "write_progress"]

PROGRESS_FILE_NAME = "progress.json"
#: Why a service stopped the process, in one line, written before its SIGTERM.
STOP_REASON_FILE = "stop_reason"


@dataclass(frozen=True)
class Progress:
    """What a training process last wrote about itself."""

    epoch: int = 0
    """Epoch in progress (0-based)."""
    total_epochs: int = 0
    """Epochs requested; 0 when the writer did not know."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest value of each metric key."""
    updated: float = 0.0
    """Unix time of the write."""


def write_progress(
    output_dir: str | os.PathLike[str],
    *,
    epoch: int,
    total_epochs: int = 0,
    metrics: Mapping[str, float] | None = None,
) -> None:
    """Writes `<output_dir>/progress.json` atomically.

    Args:
        output_dir: The run's output directory (`tp-train --output-dir`).
        epoch: Epoch in progress, 0-based.
        total_epochs: Epochs requested.
        metrics: Latest value of each metric key; non-finite values are left out (JSON has no NaN).
    """
    path = Path(output_dir) / PROGRESS_FILE_NAME
    clean = {key: float(value) for key, value in (metrics or {}).items() if math.isfinite(value)}
    data = {"epoch": int(epoch), "total_epochs": int(total_epochs), "metrics": clean, "updated": time.time()}
    temporary = path.with_name(f".{PROGRESS_FILE_NAME}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


def read_progress(output_dir: str | os.PathLike[str]) -> Progress | None:
    """Reads `<output_dir>/progress.json`; None when the file is missing or unreadable."""
    try:
        data = json.loads((Path(output_dir) / PROGRESS_FILE_NAME).read_text(encoding="utf-8"))
        metrics = {str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()}
        return Progress(
            epoch=int(data.get("epoch", 0)),
            total_epochs=int(data.get("total_epochs", 0)),
            metrics=metrics,
            updated=float(data.get("updated", 0.0)),
        )
    except (OSError, ValueError, TypeError, AttributeError):
        return None


class ProgressSink:
    """Wraps a TelemetrySink: forwards every call and keeps `progress.json` up to date from what passes through.

    `tp-train` wraps its logger in one, so every adapter's progress reaches the service without adapter code.
    The file is written when training starts (status `running`), when the epoch changes, on each epoch summary,
    and otherwise at most every `min_interval_s`, so logging a batch loss every step stays cheap.

    Args:
        inner: The sink to forward to.
        output_dir: The run's output directory.
        total_epochs: Epochs requested.
        min_interval_s: Least time between two writes caused by metric values alone.
    """

    def __init__(
        self, inner: Any, output_dir: str | os.PathLike[str], total_epochs: int = 0, min_interval_s: float = 1.0
    ) -> None:
        self._inner = inner
        self._output_dir = Path(output_dir)
        self._total_epochs = total_epochs
        self._min_interval_s = min_interval_s
        self._epoch = 0
        self._metrics: dict[str, float] = {}
        self._last_write = -math.inf

    def __getattr__(self, name: str) -> Any:
        # Anything beyond the TelemetrySink protocol (stats, enabled, ...) is the inner sink's.
        return getattr(self._inner, name)

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        """Forwards the value and records it."""
        self._inner.log_metric(key, value, step=step, epoch=epoch)
        self._metrics[key] = value
        self._record(epoch)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        """Forwards the values and records them."""
        self._inner.log_metrics(metrics, step=step, epoch=epoch)
        self._metrics.update(metrics)
        self._record(epoch)

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        """Forwards the line."""
        self._inner.log_message(message, level=level, epoch=epoch, step=step)

    def update_status(
        self, status: str, error: str | None = None, *, error_detail: str | None = None, reason: str | None = None
    ) -> None:
        """Forwards the status; `running` writes the first progress file, which tells the service training began."""
        self._inner.update_status(status, error, error_detail=error_detail, reason=reason)
        if str(status) == "running":
            self._write()

    def log_epoch_summary(
        self, epoch: int, metrics: Mapping[str, float], duration_seconds: float | None = None
    ) -> None:
        """Forwards the summary and writes the file."""
        self._inner.log_epoch_summary(epoch, metrics, duration_seconds=duration_seconds)
        self._metrics.update(metrics)
        self._epoch = max(self._epoch, epoch)
        self._write()

    def report_run_info(self, **kwargs: Any) -> None:
        """Forwards the information."""
        self._inner.report_run_info(**kwargs)

    def flush(self, timeout: float | None = None) -> Any:
        """Writes the file and flushes the inner sink."""
        self._write()
        return self._inner.flush(timeout)

    def close(self, timeout: float | None = None) -> Any:
        """Writes the file and closes the inner sink."""
        self._write()
        return self._inner.close(timeout)

    def _record(self, epoch: int | None) -> None:
        if epoch is not None and epoch > self._epoch:
            self._epoch = epoch
            self._write()
        elif time.monotonic() - self._last_write >= self._min_interval_s:
            self._write()

    def _write(self) -> None:
        self._last_write = time.monotonic()
        # Progress is a convenience for the service; it must never fail a training run.
        with contextlib.suppress(OSError, TypeError, ValueError):
            write_progress(self._output_dir, epoch=self._epoch, total_epochs=self._total_epochs, metrics=self._metrics)
