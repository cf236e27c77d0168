"""Cancelled and failed jobs: the MLflow run ends KILLED or FAILED and what was trained is kept."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient
from trainingplatform.common.v1 import common_pb2
from trainingplatform_sdk.training.train import EXIT_CANCELLED


@pytest.mark.slow
def test_cancel_keeps_the_last_checkpoint_and_kills_the_run(run_training, s3, mlflow_server) -> None:
    env = {**s3.env(), "MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "cancelled"}
    run = run_training(env, training_config={"epochs": 30, "device": "cpu"}, cancel_after_checkpoint=True)

    assert run.returncode == EXIT_CANCELLED, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_CANCELLED
    mlflow_run = MlflowClient(mlflow_server.uri).get_run(run.job.mlflow_run_id)
    assert mlflow_run.info.status == "KILLED"
    prefix = f"jobs/{run.job_id}/{run.output_dir.name}/"
    assert s3.keys(prefix) == [prefix + name for name in ("config.json", "results.json", "weights/last.pt")]
    assert run.artifacts["last_checkpoint"] == f"s3://{s3.bucket}/{prefix}weights/last.pt"
    results = s3.client().get_object(Bucket=s3.bucket, Key=prefix + "results.json")["Body"].read()
    assert json.loads(results)["status"] == "cancelled"


def test_an_exception_in_training_fails_the_run(run_training, s3, mlflow_server) -> None:
    env = {**s3.env(), "MLFLOW_TRACKING_URI": mlflow_server.uri, "MLFLOW_EXPERIMENT_NAME": "failed"}
    run = run_training(env, model_config={"name": "resnet10q"})

    assert run.returncode == 1
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    assert "unknown timm model 'resnet10q'" in run.job.error_message
    assert MlflowClient(mlflow_server.uri).get_run(run.job.mlflow_run_id).info.status == "FAILED"
    prefix = f"jobs/{run.job_id}/{run.output_dir.name}/"
    assert s3.keys(prefix) == [prefix + "config.json", prefix + "results.json"]
