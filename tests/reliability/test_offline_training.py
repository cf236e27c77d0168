"""The backend down for a whole training run, then up: the run's spool delivers everything, exactly once, in order.

`tp-train` runs here on its own, as it would outside a trainer service: when it exits its spool is all that is
left. The test replays it the way the trainer service does for its ended runs (`Supervisor._deliver_spool`): a
new TrainingLogger for the same job and spool directory replays what it finds there when it is created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.telemetry.spool import read_state

from reliability.polling import StatusWatch

# MLflow and artifact storage fall back to files in the working directory; nothing from outside is used.
_TRACKING_ENV = ("MLFLOW_TRACKING_URI", "TP_ARTIFACTS_BUCKET", "AWS_S3_ENDPOINT_URL", "INTERNAL_AUTH_TOKEN")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the spool, not the database, is under test
def test_a_run_trained_while_the_backend_is_down_is_delivered_from_its_spool(
    backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = backend.create_job(epochs=1)
    assert backend.stop() == 0
    output_dir = tmp_path / "run"
    env = {key: value for key, value in os.environ.items() if key not in _TRACKING_ENV}
    env |= {"BACKEND_API_URL": f"grpc://{backend.address}", "JOB_TELEMETRY_TOKEN": token}
    # tp-train waits up to its close timeout (30 s) for the backend, then leaves the rest in <output_dir>/spool.
    trained = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainingplatform_sdk.training.train",
            "--job-id",
            job_id,
            "--framework",
            "timm",
            "--model-config",
            json.dumps({"name": "resnet10t", "image_size": 32}),
            "--dataset-config",
            json.dumps({"name": "digits"}),
            "--training-config",
            json.dumps({"epochs": 1, "log_every_n_steps": 1}),
            "--output-dir",
            str(output_dir),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "Training completed: 1 epoch(s)" in trained.stderr

    spool_dir = output_dir / "spool"
    state = read_state(spool_dir)
    metrics, logs = state["metrics"]["assigned"], state["logs"]["assigned"]
    assert state["metrics"]["committed"] == state["logs"]["committed"] == 0  # nothing reached the backend
    methods = [call["method"] for call in state["calls"]]
    assert methods.count("UpdateStatus") == 2 and methods[-1] == "UpdateStatus"  # RUNNING, then COMPLETED last
    assert metrics > 20 and logs > 0
    assert backend.metric_sequences(job_id) == [] and backend.job_status(job_id) == "PENDING"

    backend.restart()
    with StatusWatch(backend, job_id, "COMPLETED") as watch:
        replay = open_logger(
            job_id,
            backend_address=backend.address,
            token=token,
            spool_dir=spool_dir,
            settings=LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5),
        )
        assert replay.stats.replayed == metrics + logs
        report = replay.close(60)

    assert report.committed_metrics == metrics and report.committed_logs == logs
    assert report.pending_metrics == report.pending_logs == report.calls_pending == 0
    assert report.calls_delivered == len(state["calls"]) and report.calls_failed == 0 and report.error is None
    assert backend.metric_sequences(job_id) == list(range(1, metrics + 1))
    assert backend.log_sequences(job_id) == list(range(1, logs + 1))
    for stream in ("metrics", "logs"):
        assert backend.cursor_row(job_id, stream)["duplicate_count"] == 0
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert watch.rows_when_seen == (metrics, logs)  # COMPLETED arrived after the last metric and log
    with JobsClient(backend.address, backend.internal_token) as client:
        stored = list(client.metrics(job_id))
        lines = [line.message for line in client.logs(job_id)]
        job = client.get_job(job_id)
        summaries = [event.epoch_summary for event in client.subscribe(job_id) if event.kind == "epoch_summary"]
    batch_losses = [point.step for point in stored if point.key == "train/batch_loss"]
    assert batch_losses == list(range(1, len(batch_losses) + 1)) and batch_losses
    assert {"train/loss", "val/loss", "val/accuracy"} <= {point.key for point in stored if point.epoch == 0}
    assert lines[0] == "Starting training: resnet10t" and "Training completed: 1 epoch(s)" in lines
    assert [summary.epoch for summary in summaries] == [0] and "val/accuracy" in summaries[0].metrics
    assert job.status == "COMPLETED" and job.mlflow_run_id and "best_checkpoint" in job.artifacts
    # The replay delivered the job's terminal status and everything before it: the spool is removed.
    assert not spool_dir.exists()
