"""Jobs tracked in a real MLflow server and stored in a real S3 server (SeaweedFS), run through `tp-train`."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from support.mlflow_server import MlflowServer
from support.s3 import SeaweedS3
from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk.training.artifacts import MULTIPART_THRESHOLD

PREFIX = "platform-tests"


def settings(s3: SeaweedS3, mlflow_server: MlflowServer, experiment: str, tracking_uri: str = "") -> dict[str, str]:
    return {
        **s3.env(),
        "TP_ARTIFACTS_PREFIX": PREFIX,
        "MLFLOW_TRACKING_URI": tracking_uri or mlflow_server.uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
    }


def runs_of(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} was not created"
    return client.search_runs([found.experiment_id])


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [metric.step for metric in client.get_metric_history(run_id, key)]


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    paths: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return paths


@pytest.mark.slow
def test_timm_job_is_one_mlflow_run_with_checkpoints_in_the_bucket(run_training, s3, mlflow_server) -> None:
    # Credentials in the URI (the server does not check them) must never be shown or reported.
    with_credentials = mlflow_server.uri.replace("//", "//ann:s3cr3t@")
    run = run_training(settings(s3, mlflow_server, "timm-digits", with_credentials))

    assert run.returncode == 0, run.stderr[-3000:]
    assert "s3cr3t" not in run.stdout + run.stderr
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    client = MlflowClient(mlflow_server.uri)
    (mlflow_run,) = runs_of(client, "timm-digits")
    info, data = mlflow_run.info, mlflow_run.data
    assert (info.run_name, info.status) == (run.job_id, "FINISHED")
    assert data.tags["job_id"] == run.job_id
    assert (data.tags["framework"], data.tags["model"]) == ("timm", "resnet10t")
    assert data.params["model.name"] == "resnet10t"
    assert data.params["training.epochs"] == "2"
    assert data.params["advanced.seed"] == "1"
    assert data.params["advanced.extra.label_smoothing"] == "0.1"
    # One point per epoch, step = epoch; batch losses stay in the backend only.
    for key in ("val/accuracy", "val/loss", "train/loss", "lr", "epoch_time_s"):
        assert steps(client, info.run_id, key) == [0, 1], key
    assert "train/batch_loss" not in data.metrics
    assert artifact_paths(client, info.run_id) == {"config.json", "results.json", "checkpoints/best.pt"}
    # Server-proxied artifacts: the MLflow server wrote them to the bucket.
    assert any(key.endswith(f"{info.run_id}/artifacts/checkpoints/best.pt") for key in s3.keys("mlflow/"))

    job_prefix = f"{PREFIX}/jobs/{run.job_id}/{run.output_dir.name}/"
    assert s3.keys(job_prefix) == [
        job_prefix + name for name in ("config.json", "results.json", "weights/best.pt", "weights/last.pt")
    ]
    head = s3.client().head_object(Bucket=s3.bucket, Key=job_prefix + "weights/best.pt")
    assert head["ContentLength"] > MULTIPART_THRESHOLD and "-" in head["ETag"]  # a multipart upload's ETag

    assert run.job.mlflow_run_id == info.run_id
    assert run.job.mlflow_tracking_uri == mlflow_server.uri
    base = f"s3://{s3.bucket}/{job_prefix}"
    assert run.artifacts == {
        "config": base + "config.json",
        "results": base + "results.json",
        "best_checkpoint": base + "weights/best.pt",
        "last_checkpoint": base + "weights/last.pt",
    }


@pytest.mark.slow
def test_yolo_job_is_one_mlflow_run_without_ultralytics_autologging(run_training, s3, mlflow_server, tmp_path) -> None:
    run = run_training(
        settings(s3, mlflow_server, "yolo-shapes"),
        framework="ultralytics",
        model_config={"name": "yolo11n.yaml", "image_size": 64},
        dataset_config={"name": "shapes"},
        training_config={"epochs": 1, "batch_size": 8, "device": "cpu"},
        advanced_config={"extra": {"num_threads": 2, "mosaic": 0.0}},
    )

    assert run.returncode == 0, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_COMPLETED
    client = MlflowClient(mlflow_server.uri)
    # Ultralytics' own MLflow callback would log into this experiment too (it reads MLFLOW_EXPERIMENT_NAME).
    (mlflow_run,) = runs_of(client, "yolo-shapes")
    assert mlflow_run.info.run_name == run.job_id and mlflow_run.info.status == "FINISHED"
    assert mlflow_run.data.params["advanced.extra.mosaic"] == "0.0"
    for key in ("metrics/mAP50-95", "metrics/precision", "train/box_loss", "val/cls_loss", "lr/pg0"):
        assert steps(client, mlflow_run.info.run_id, key) == [0], key
    assert artifact_paths(client, mlflow_run.info.run_id) == {
        "config.json",
        "results.json",
        "results.csv",
        "checkpoints/best.pt",
    }
    assert not list(tmp_path.glob("**/mlflow.db")) and not list(tmp_path.glob("**/mlruns"))

    job_prefix = f"{PREFIX}/jobs/{run.job_id}/{run.output_dir.name}/"
    names = ("config.json", "results.csv", "results.json", "weights/best.pt", "weights/last.pt")
    assert s3.keys(job_prefix) == [job_prefix + name for name in names]
    assert run.job.mlflow_run_id == mlflow_run.info.run_id
    assert run.artifacts["results_csv"] == f"s3://{s3.bucket}/{job_prefix}results.csv"
    assert run.artifacts["best_checkpoint"] == f"s3://{s3.bucket}/{job_prefix}weights/best.pt"
