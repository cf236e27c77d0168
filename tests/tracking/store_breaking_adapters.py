"""Adapters that train (the counting adapter of tests/trainers, milliseconds) and then break the job's artifact
store for real before `tp-train` stores the results, so that an upload after training fails.

`tp-train` loads them as `store_breaking_adapters:Class` with tests/tracking and tests/trainers on PYTHONPATH
(test_upload_failure.py); the job's store settings are the process environment's, as `tp-train` reads them.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from fake_adapters import CountingAdapter
from trainingplatform_sdk.training.adapter import TrainingResult


class EndpointClosingAdapter(CountingAdapter):
    """Trains, writes `trained` in the output dir for the test to close the S3 endpoint (a proxy it owns), and
    returns once the endpoint (AWS_S3_ENDPOINT_URL) refuses connections: every upload of the results then fails."""

    def fit(self) -> TrainingResult:
        result = super().fit()
        (self.output_dir / "trained").touch()
        endpoint = urlsplit(os.environ["AWS_S3_ENDPOINT_URL"])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection((endpoint.hostname, endpoint.port), timeout=1).close()
            except ConnectionRefusedError:
                return result
            time.sleep(0.05)
        raise TimeoutError(f"the test did not close {endpoint.hostname}:{endpoint.port} within 60 s")


class CsvBlockingAdapter(CountingAdapter):
    """Trains and writes results.csv (as ultralytics does), then puts a directory where the local artifact store
    (`TP_DATA_DIR/artifacts/<job_id>/<run>`, the run being the output directory's name) stores results.csv: the
    checkpoints and results.json are stored, then storing results.csv fails (a file cannot replace a directory)."""

    def fit(self) -> TrainingResult:
        result = super().fit()
        (self.output_dir / "results.csv").write_text("epoch,val/accuracy\n0,0.5\n", encoding="utf-8")
        blocker = Path(os.environ["TP_DATA_DIR"]) / "artifacts" / self.job_id / self.output_dir.name / "results.csv"
        blocker.mkdir(parents=True)
        (blocker / "in-the-way").touch()
        return result


class MlflowClosingAdapter(CountingAdapter):
    """Before the second epoch, writes `mlflow-close` in the output dir for the test to close the MLflow server's
    endpoint (a proxy it owns, MLFLOW_TRACKING_URI), and goes on once it refuses connections: the second epoch's
    metrics and every upload to the MLflow run after training then fail, as in an MLflow outage mid-training."""

    def on_batch(self, epoch: int, batch: int) -> None:
        if (epoch, batch) == (1, 0):
            (self.output_dir / "mlflow-close").touch()
            wait_until_refused(os.environ["MLFLOW_TRACKING_URI"])


def wait_until_refused(url: str) -> None:
    """Returns once `url`'s host and port refuse connections; raises after 60 s."""
    endpoint = urlsplit(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection((endpoint.hostname, endpoint.port), timeout=1).close()
        except ConnectionRefusedError:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the test did not close {endpoint.hostname}:{endpoint.port} within 60 s")


class MlflowStallingAdapter(CountingAdapter):
    """Before the second epoch, writes `mlflow-stall` in the output dir and waits for the test to stall the MLflow
    server's endpoint (a proxy it owns) and write `mlflow-stalled`: the second epoch's metrics then meet a server
    that accepts connections and never answers. After training, writes `trained` and returns once the endpoint
    refuses connections (the test closes the proxy)."""

    def on_batch(self, epoch: int, batch: int) -> None:
        if (epoch, batch) == (1, 0):
            (self.output_dir / "mlflow-stall").touch()
            wait_for_file(self.output_dir / "mlflow-stalled")

    def fit(self) -> TrainingResult:
        result = super().fit()
        (self.output_dir / "trained").touch()
        wait_until_refused(os.environ["MLFLOW_TRACKING_URI"])
        return result


class TrainedMarkingAdapter(CountingAdapter):
    """Trains, writes `trained` in the output dir and waits for the test to write `broken` (after it broke a
    store) before `tp-train` stores the results."""

    def fit(self) -> TrainingResult:
        result = super().fit()
        (self.output_dir / "trained").touch()
        wait_for_file(self.output_dir / "broken")
        return result


def wait_for_file(path: Path) -> None:
    """Returns once `path` exists; raises after 60 s."""
    deadline = time.monotonic() + 60
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test did not write {path} within 60 s")
        time.sleep(0.05)
