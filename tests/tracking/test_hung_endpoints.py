"""An S3 endpoint or an MLflow server that accepts connections and never answers (a hung server, a stalled
network) holds a job for seconds, not minutes: the start check fails naming the setting, MLflow logging pauses
mid-training with a WARNING, and a final upload times out.

The bounds asserted on durations are generous (far above the timeouts, far below what the job took before)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.proxy import ChaosProxy
from trainingplatform.common.v1 import common_pb2

TESTS_DIR = Path(__file__).resolve().parent.parent
ADAPTERS_PYTHONPATH = os.pathsep.join(str(TESTS_DIR / d) for d in ("tracking", "trainers"))
# One attempt per upload: an endpoint that fails here stays failed (TP_ARTIFACTS_UPLOAD_RETRY_S).
NO_MLFLOW = {"TP_MLFLOW_ENABLED": "false", "TP_ARTIFACTS_UPLOAD_RETRY_S": "0", "PYTHONPATH": ADAPTERS_PYTHONPATH}
COUNTING_JOB = {
    "model_config": {"name": "counter"},
    "dataset_config": {"name": "numbers"},
    "training_config": {"epochs": 2},
    "advanced_config": {},
}


@pytest.fixture
def backend(backend: BackendProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackendProcess]:
    """Jobs are created as framework `counting`; `tp-train` gets the adapter's `module:Class` path."""
    create_job = backend.create_job
    monkeypatch.setattr(backend, "create_job", lambda framework, **job: create_job("counting", **job))
    yield backend


def when_marked(runs_dir: Path, marker: str, action: Callable[[Path], None]) -> threading.Thread:
    """Runs `action(output_dir)` in a thread once a job's adapter wrote `marker` in its output dir."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            found = list(runs_dir.glob(f"*/{marker}"))
            if found:
                action(found[0].parent)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_hung_s3_endpoint_fails_the_job_at_start_in_seconds(run_training, s3) -> None:
    with ChaosProxy(f"127.0.0.1:{s3.port}", seed=0) as proxy:
        proxy.stall()
        started = time.monotonic()
        run = run_training(
            {**s3.env(), "AWS_S3_ENDPOINT_URL": f"http://{proxy.address}", **NO_MLFLOW},
            framework="fake_adapters:CountingAdapter",
            **COUNTING_JOB,
        )
        took = time.monotonic() - started

    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    expected = f"AWS_S3_ENDPOINT_URL=http://{proxy.address} did not answer within 10s (checking the bucket)"
    assert expected in run.job.error_message
    assert not (run.output_dir / "weights").exists()
    assert took < 90  # was 240 s: 3 attempts of 60 s and backoff


def test_a_hung_s3_endpoint_at_the_final_upload_fails_the_job_in_about_a_minute(run_training, s3, tmp_path) -> None:
    with ChaosProxy(f"127.0.0.1:{s3.port}", seed=0) as proxy:

        def stall(output_dir: Path) -> None:
            proxy.stall()
            (output_dir / "broken").touch()

        watcher = when_marked(tmp_path / "runs", "trained", stall)
        started = time.monotonic()
        run = run_training(
            {**s3.env(), "AWS_S3_ENDPOINT_URL": f"http://{proxy.address}", **NO_MLFLOW},
            framework="store_breaking_adapters:TrainedMarkingAdapter",
            **COUNTING_JOB,
        )
        took = time.monotonic() - started
        watcher.join(10)

    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    expected = f"AWS_S3_ENDPOINT_URL=http://{proxy.address} did not answer within 30s (uploading best.pt"
    assert expected in run.job.error_message
    assert took < 150  # was 4 minutes


def test_a_hung_mlflow_server_mid_training_stops_mlflow_logging_in_seconds(
    run_training, s3, mlflow_server, tmp_path
) -> None:
    with ChaosProxy(f"127.0.0.1:{mlflow_server.port}", seed=0) as proxy:

        def stall(output_dir: Path) -> None:
            proxy.stall()
            (output_dir / "mlflow-stalled").touch()

        stalling = when_marked(tmp_path / "runs", "mlflow-stall", stall)
        closing = when_marked(tmp_path / "runs", "trained", lambda _: proxy.close())
        started = time.monotonic()
        run = run_training(
            {**s3.env(), "MLFLOW_TRACKING_URI": f"http://{proxy.address}", "PYTHONPATH": ADAPTERS_PYTHONPATH},
            framework="store_breaking_adapters:MlflowStallingAdapter",
            **COUNTING_JOB,
        )
        took = time.monotonic() - started
        stalling.join(10)
        closing.join(10)

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    assert "MLflow metric logging paused at epoch 1" in run.stderr
    assert "timed out" in run.stderr.split("MLflow metric logging paused at epoch 1", 1)[1].splitlines()[0]
    assert took < 120  # the training loop waited 8 minutes in MlflowClient.log_batch
