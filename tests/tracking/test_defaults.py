"""Nothing configured: a local SQLite MLflow store and a local artifacts directory in the data directory."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from mlflow import MlflowClient
from trainingplatform.common.v1 import common_pb2


@pytest.mark.slow
def test_default_is_a_local_store_and_local_artifacts_in_the_data_dir(run_training, tmp_path) -> None:
    run = run_training({}, training_config={"epochs": 1, "device": "cpu"})

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    data = tmp_path / "data"
    tracking_uri = f"sqlite:///{data / 'mlflow.db'}"
    assert run.job.mlflow_tracking_uri == tracking_uri
    client = MlflowClient(tracking_uri)
    mlflow_run = client.get_run(run.job.mlflow_run_id)
    assert (mlflow_run.info.run_name, mlflow_run.info.status) == (run.job_id, "FINISHED")
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "val/accuracy")] == [0]
    assert mlflow_run.info.artifact_uri.startswith((data / "mlartifacts").as_uri())
    assert {info.path for info in client.list_artifacts(mlflow_run.info.run_id, "checkpoints")} == {
        "checkpoints/best.pt"
    }

    local = data / "artifacts" / run.job_id / run.output_dir.name
    assert run.artifacts == {
        "config": (local / "config.json").as_uri(),
        "results": (local / "results.json").as_uri(),
        "best_checkpoint": (local / "weights" / "best.pt").as_uri(),
        "last_checkpoint": (local / "weights" / "last.pt").as_uri(),
    }
    for uri in run.artifacts.values():
        assert Path(urlsplit(uri).path).is_file(), uri
    # One copy on disk: the local MLflow store's checkpoint is a hard link to the same file as the job's own.
    mlflow_best = Path(url2pathname(urlsplit(mlflow_run.info.artifact_uri).path)) / "checkpoints" / "best.pt"
    assert mlflow_best.stat().st_ino == (local / "weights" / "best.pt").stat().st_ino
    assert mlflow_best.stat().st_nlink >= 3, "run directory, artifacts and MLflow store share one file"
