"""MLflow going away after the job started: the job logs a WARNING and completes as long as its checkpoints reached
their artifact store; it fails only when that store fails. The epochs' metrics logged meanwhile reach the run once
MLflow answers again."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support.backend import BackendProcess
from support.proxy import ChaosProxy
from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk.training import recorder as recorder_module
from trainingplatform_sdk.training.adapter import Status, TrainingResult

from tracking.test_epoch_metrics import history, start_recorder

TESTS_DIR = Path(__file__).resolve().parent.parent
ADAPTERS_PYTHONPATH = os.pathsep.join(str(TESTS_DIR / d) for d in ("tracking", "trainers"))
COUNTING_JOB = {
    "framework": "store_breaking_adapters:MlflowClosingAdapter",
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


def close_on_request(proxy: ChaosProxy, runs_dir: Path) -> None:
    """Closes the proxy once a job's adapter wrote `mlflow-close` (the adapter then waits for it)."""
    deadline = time.monotonic() + 120
    while not list(runs_dir.glob("*/mlflow-close")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.close()


def run_with_mlflow_outage(run_training, mlflow_server, tmp_path: Path, env: dict[str, str]):
    with ChaosProxy(f"127.0.0.1:{mlflow_server.port}", seed=0) as proxy:
        closer = threading.Thread(target=close_on_request, args=(proxy, tmp_path / "runs"), daemon=True)
        closer.start()
        env = {**env, "MLFLOW_TRACKING_URI": f"http://{proxy.address}", "PYTHONPATH": ADAPTERS_PYTHONPATH}
        run = run_training(env, **COUNTING_JOB)
        closer.join(10)
    return run


def test_an_mlflow_outage_mid_training_completes_the_job_whose_checkpoints_reached_s3(
    run_training, s3, mlflow_server, tmp_path
) -> None:
    run = run_with_mlflow_outage(run_training, mlflow_server, tmp_path, s3.env())

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    assert "MLflow metric logging paused at epoch 1" in run.stderr
    assert f"the MLflow run {run.job.mlflow_run_id} is missing checkpoints/best.pt, results.json" in run.stderr
    assert f"they are in s3://{s3.bucket}/jobs/{run.job_id}/{run.output_dir.name}/" in run.stderr
    prefix = f"jobs/{run.job_id}/{run.output_dir.name}/"
    assert s3.keys(prefix) == [
        prefix + name for name in ("config.json", "results.json", "weights/best.pt", "weights/last.pt")
    ]
    assert json.loads((run.output_dir / "results.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_an_mlflow_outage_without_s3_completes_the_job_with_its_checkpoints_on_the_trainer(
    run_training, mlflow_server, tmp_path
) -> None:
    """MLflow's artifact store was the only remote one: the checkpoints stay on the trainer's disk, and the WARNING
    says so."""
    run = run_with_mlflow_outage(run_training, mlflow_server, tmp_path, {})

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    stored = tmp_path / "data" / "artifacts" / run.job_id / run.output_dir.name
    assert f"they are only on this trainer's disk, in {stored}" in run.stderr
    assert run.artifacts["best_checkpoint"] == (stored / "weights" / "best.pt").as_uri()
    assert (stored / "weights" / "best.pt").is_file()


def test_metrics_logged_while_mlflow_is_down_reach_the_run_once_it_answers_again(
    mlflow_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short MLflow outage mid-training (a restart) used to stop MLflow metric logging for the rest of the job."""
    monkeypatch.setattr(recorder_module, "METRICS_RETRY_FIRST_DELAY_S", 1.0, raising=False)
    with ChaosProxy(f"127.0.0.1:{mlflow_server.port}", seed=0) as proxy:
        recorder, lines = start_recorder(f"http://{proxy.address}", tmp_path, "outage-resume")
        assert recorder.run is not None
        sink = recorder.wrap(lines)
        sink.log_epoch_summary(0, {"train/loss": 1.0})
        proxy.pause()
        proxy.cut_all()
        sink.log_epoch_summary(1, {"train/loss": 0.5})
        sink.log_epoch_summary(2, {"train/loss": 0.25})  # before the next try: kept
        resumed_ms = time.time() * 1000
        proxy.resume()
        time.sleep(1.5)
        sink.log_epoch_summary(3, {"train/loss": 0.125})
        after_outage = history(mlflow_server.uri, recorder.run.run_id, "train/loss")
        points = MlflowClient(mlflow_server.uri).get_metric_history(recorder.run.run_id, "train/loss")

        proxy.pause()
        proxy.cut_all()
        sink.log_epoch_summary(4, {"train/loss": 0.0625})
        proxy.resume()
        checkpoint = recorder.output_dir / "weights" / "best.pt"
        checkpoint.parent.mkdir(parents=True)
        checkpoint.write_bytes(b"w" * 1024)
        recorder.finish(TrainingResult(status=Status.COMPLETED, epochs_completed=5, best_checkpoint=checkpoint))

    assert after_outage == [(0, 1.0), (1, 0.5), (2, 0.25), (3, 0.125)]
    # Sent late, stamped with the time of their epoch's end, once: a resent epoch adds no point of its own.
    assert [point.timestamp < resumed_ms for point in points] == [True, True, True, False]
    assert history(mlflow_server.uri, recorder.run.run_id, "train/loss")[-1] == (4, 0.0625)  # sent by finish
    messages = [message for _, message in lines.lines]
    assert any(message.startswith("MLflow metric logging paused at epoch 1:") for message in messages), messages
    assert any("MLflow metric logging resumed at epoch 3" in message for message in messages), messages
