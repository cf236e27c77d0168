"""A checkpoint upload to a server-proxied MLflow (`--artifacts-destination s3://...`): the server answers only once
it pushed the file to S3, so the client's read timeout must cover that push. The timeout of a file upload grows with
the file's size, and a failed upload is not sent again blindly. A real MLflow server whose S3 (SeaweedFS) is behind a
throttled link; MLFLOW_HTTP_REQUEST_TIMEOUT stands scaled down for the 60 s default."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.mlflow_server import MlflowServer
from support.throttled_proxy import ThrottledProxy
from trainingplatform_sdk.training.tracking import MlflowRun, TrackingSettings

from .conftest import running_mlflow_server

RATE = 1_000_000  # bytes/s from the MLflow server to S3
SIZE = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def slow_s3(s3) -> Iterator[ThrottledProxy]:
    proxy = ThrottledProxy(s3.port, rate=RATE).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def slow_mlflow(tmp_path_factory: pytest.TempPathFactory, s3, slow_s3: ThrottledProxy) -> Iterator[MlflowServer]:
    with running_mlflow_server(
        tmp_path_factory.mktemp("mlflow-slow-s3"),
        s3,
        prefix="mlflow-slow",
        s3_endpoint_url=f"http://127.0.0.1:{slow_s3.port}",
    ) as server:
        yield server


def test_a_checkpoint_slower_to_reach_s3_than_the_request_timeout_is_uploaded_once(
    slow_mlflow, slow_s3, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # less than the ~2 s the server takes to push it
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    run = MlflowRun.start(
        TrackingSettings(tracking_uri=slow_mlflow.uri, experiment_name="large-upload"),
        job_id="job-1",
        framework="timm",
        model_name="m",
        params={},
    )
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(os.urandom(SIZE))
    sent_before = slow_s3.sent

    run.log_artifact(checkpoint, "checkpoints")

    stored = {a.path: a.file_size for a in run.client.list_artifacts(run.run_id, "checkpoints")}
    assert stored == {"checkpoints/best.pt": SIZE}
    assert slow_s3.sent - sent_before < 1.5 * SIZE  # sent to S3 once, not once per client attempt
