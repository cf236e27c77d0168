"""A TelemetrySink that records every call, for asserting what an adapter or the entry point reported."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Point:
    """One recorded metric value."""

    key: str
    value: float
    step: int | None
    epoch: int | None


@dataclass
class RecordingSink:
    """Records calls in order. `on_metric` runs after each recorded metric (a hook to act mid-training)."""

    calls: list[tuple[str, Any]] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    on_metric: Callable[[Point], None] | None = None
    closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log_metric(self, key: str, value: float, step: int | None = None, epoch: int | None = None) -> None:
        self.log_metrics({key: value}, step=step, epoch=epoch)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, epoch: int | None = None) -> None:
        new = [Point(key, float(value), step, epoch) for key, value in metrics.items()]
        with self._lock:
            self.points.extend(new)
            self.calls.append(("metrics", new))
        for point in new:
            if self.on_metric is not None:
                self.on_metric(point)

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        with self._lock:
            self.calls.append(("message", (str(level), message)))

    def update_status(
        self, status: str, error: str | None = None, *, error_detail: str | None = None, reason: str | None = None
    ) -> None:
        with self._lock:
            self.calls.append(("status", (str(status), error, error_detail, reason)))

    def log_epoch_summary(
        self, epoch: int, metrics: Mapping[str, float], duration_seconds: float | None = None
    ) -> None:
        with self._lock:
            self.calls.append(("summary", (epoch, dict(metrics), duration_seconds)))

    def report_run_info(
        self, *, mlflow_run_id: str | None = None, mlflow_tracking_uri: str | None = None, artifacts: Any = None
    ) -> None:
        with self._lock:
            self.calls.append(("run_info", (mlflow_run_id, mlflow_tracking_uri, artifacts)))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    # --- Queries ---------------------------------------------------------------------------------------------

    def series(self, key: str) -> list[Point]:
        """Every recorded point of `key`, in order."""
        return [p for p in self.points if p.key == key]

    def keys_by_epoch(self, *, exclude: tuple[str, ...] = ("train/batch_loss",)) -> dict[int | None, list[str]]:
        """Metric keys per epoch (with repeats, so duplicates show), leaving out `exclude`."""
        result: dict[int | None, list[str]] = {}
        for point in self.points:
            if point.key not in exclude:
                result.setdefault(point.epoch, []).append(point.key)
        return result

    def statuses(self) -> list[str]:
        return [args[0] for kind, args in self.calls if kind == "status"]

    def status_calls(self) -> list[tuple[str, str | None, str | None, str | None]]:
        return [args for kind, args in self.calls if kind == "status"]

    def messages(self, level: str | None = None) -> list[str]:
        return [text for kind, (lvl, text) in (c for c in self.calls if c[0] == "message") if level in (None, lvl)]

    def summaries(self) -> list[tuple[int, dict[str, float], float | None]]:
        return [args for kind, args in self.calls if kind == "summary"]
