"""What `tp` prints and draws: a job followed live, its summary, and PNG plots of its metrics."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from trainingplatform_sdk.clients import Job, JobsClient, TelemetryEvent


class CliError(Exception):
    """An error shown as one line."""


def fmt_value(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.4g}"


# --- following a job ----------------------------------------------------------------------------------------


class Follower:
    """Renders a job's live telemetry: a progress bar over epochs and steps, latest metrics, log lines."""

    SHOWN = ("train/loss", "train/batch_loss", "val/loss", "val/accuracy", "train/box_loss", "metrics/mAP50")

    def __init__(self, job: Job, out: TextIO = sys.stdout, *, show_logs: bool = True) -> None:
        self.job = job
        self.out = out
        self.tty = out.isatty()
        self.show_logs = show_logs
        self.epoch = 0
        self.step = 0
        self.latest: dict[str, float] = {}
        self.final_status = job.status
        self._last_line = 0.0

    def feed(self, event: TelemetryEvent) -> None:
        """Takes one subscription event."""
        if event.kind == "metrics":
            for point in event.metrics:
                self.latest[point.key] = point.value
                if point.epoch is not None:
                    self.epoch = max(self.epoch, point.epoch)
                if point.step is not None:
                    self.step = max(self.step, point.step)
            self._progress()
        elif event.kind == "logs" and self.show_logs:
            for line in event.logs:
                self._print(f"[{line.level.lower():7}] {line.message}")
        elif event.kind == "epoch_summary" and event.epoch_summary is not None:
            summary = event.epoch_summary
            shown = ", ".join(f"{k} {fmt_value(v)}" for k, v in sorted(summary.metrics.items()) if "/" in k)
            self._print(f"epoch {summary.epoch + 1}/{self.job.epochs} done in {summary.duration_seconds:.1f}s: {shown}")
        elif event.kind == "status" and event.status is not None:
            self.final_status = event.status.to_status
            reason = f" ({event.status.reason})" if event.status.reason else ""
            self._print(f"status {event.status.to_status}{reason}")
            if event.status.error_message:
                self._print(f"error: {event.status.error_message}")
        elif event.kind == "lagged":
            self._print("(fell behind the live stream; catching up from the database)")

    def _bar(self) -> str:
        total = max(self.job.epochs, 1)
        done = min(self.epoch, total)
        width = 24
        filled = int(width * done / total)
        shown = " ".join(f"{k} {fmt_value(self.latest[k])}" for k in self.SHOWN if k in self.latest)
        return (
            f"epoch {min(self.epoch + 1, total)}/{total} [{'#' * filled}{'.' * (width - filled)}] "
            f"step {self.step} {shown}"
        )

    def _progress(self) -> None:
        if self.tty:
            self.out.write("\r\033[K" + self._bar())
            self.out.flush()
        elif time.monotonic() - self._last_line > 2.0:  # a log file gets a line every 2 s, not a flood
            self._last_line = time.monotonic()
            self.out.write(self._bar() + "\n")
            self.out.flush()

    def _print(self, text: str) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + "\n" + self._bar())
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        """Ends the progress line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def follow(client: JobsClient, job: Job, out: TextIO = sys.stdout) -> Job:
    """Follows a job to its end, printing progress; returns the final job."""
    follower = Follower(job, out)
    for event in client.subscribe(job.job_id):
        follower.feed(event)
    follower.finish()
    return client.get_job(job.job_id)


def print_summary(job: Job, out: TextIO = sys.stdout, client: JobsClient | None = None) -> None:
    """The final summary of a job: status, time, last metrics, where its results are."""
    duration = ""
    if job.started_at and job.ended_at:
        duration = f" in {(job.ended_at - job.started_at).total_seconds():.1f}s"
    out.write(f"\njob {job.job_id}: {job.status}{duration}\n")
    if job.error_message:
        out.write(f"  error: {job.error_message}\n")
    if client is not None:
        latest: dict[str, float] = {}
        for point in client.metrics(job.job_id):
            latest[point.key] = point.value
        for key in sorted(k for k in latest if not k.startswith("lr")):
            out.write(f"  {key:24} {fmt_value(latest[key])}\n")
    if job.mlflow_run_id:
        out.write(f"  MLflow run {job.mlflow_run_id} at {job.mlflow_tracking_uri}\n")
    for name, uri in sorted(job.artifacts.items()):
        out.write(f"  artifact {name}: {uri}\n")
    out.flush()


def plot_series(
    jobs: dict[str, dict[str, list[tuple[float, float]]]], path: Path, keys: Iterable[str] | None = None
) -> None:
    """A PNG with one panel per job: the curves of its (loss) metrics against step or epoch."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install 'trainingplatform-sdk[cli]'") from None
    figure, axes = plt.subplots(1, len(jobs), figsize=(6 * len(jobs), 4), squeeze=False)
    for axis, (title, series) in zip(axes[0], jobs.items(), strict=True):
        wanted = list(keys) if keys else sorted(series)
        for key in wanted:
            if key in series:
                xs, ys = zip(*series[key], strict=True)
                axis.plot(xs, ys, label=key, marker="." if len(xs) < 20 else None)
        axis.set_title(title)
        axis.set_xlabel("epoch / step")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
