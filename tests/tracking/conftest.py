"""Fixtures of the tracking tests: a real SeaweedFS S3 server, a real MLflow server storing its artifacts in it,
a real backend, and `tp-train` run as a subprocess exactly as a trainer service runs it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.backend import BackendProcess, auth
from support.mlflow_server import MlflowServer
from support.s3 import SeaweedS3
from trainingplatform.jobs.v1 import jobs_pb2

VENV_BIN = Path(sys.executable).parent
#: Settings of the process that runs the tests, which must not leak into a training process. PYTEST_CURRENT_TEST
#: would make ultralytics skip its MLflow autologging on its own and hide a duplicate run from the YOLO test.
_ISOLATED_PREFIXES = (
    *("MLFLOW_", "AWS_", "TP_ARTIFACTS_", "TP_MLFLOW_", "PYTEST_"),
    *("BACKEND_API_URL", "JOB_TELEMETRY_TOKEN"),
)
TIMM_JOB = {
    "framework": "timm",
    "model_config": {"name": "resnet10t", "image_size": 32},
    "dataset_config": {"name": "digits"},
    "training_config": {"epochs": 2, "batch_size": 64, "log_every_n_steps": 10, "device": "cpu"},
    "advanced_config": {"seed": 1, "optimizer": "adamw", "extra": {"num_threads": 2, "label_smoothing": 0.1}},
}


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the SQLite + PostgreSQL parametrisation): these tests are about MLflow and S3."""
    return f"sqlite:///{tmp_path / 'backend.db'}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS on loopback with the bucket `tp-artifacts`."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def running_mlflow_server(
    data_dir: Path, s3: SeaweedS3, *, prefix: str = "mlflow", s3_endpoint_url: str | None = None
) -> Iterator[MlflowServer]:
    """An MLflow server whose artifacts go to `s3://tp-artifacts/<prefix>` (server-proxied), reaching SeaweedFS at
    `s3_endpoint_url` (default its own URL; a proxy's to put a slow or broken link in between)."""
    server = MlflowServer(
        data_dir,
        artifacts_destination=f"s3://{s3.bucket}/{prefix}",
        env={
            "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url or s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        },
    ).start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, s3: SeaweedS3) -> Iterator[MlflowServer]:
    """An MLflow server whose artifacts go to `s3://tp-artifacts/mlflow` (server-proxied)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow"), s3) as server:
        yield server


@dataclass
class TrainRun:
    """A finished `tp-train` process and what the backend knows of its job."""

    job_id: str
    returncode: int
    stdout: str
    stderr: str
    output_dir: Path
    job: Any
    """The backend's `Job` message (GetJob)."""

    @property
    def artifacts(self) -> dict[str, str]:
        """The job's artifact URIs by name, as GetJob shows them."""
        return {artifact.name: artifact.uri for artifact in self.job.artifacts}


@pytest.fixture
def run_training(backend: BackendProcess, tmp_path: Path) -> Callable[..., TrainRun]:
    """Runs one job through `tp-train` in a subprocess against the backend; returns its TrainRun.

    Arguments: `env` (the tracking and storage settings); `cancel_after_checkpoint=True` sends SIGTERM once the
    first last.pt is written; `while_running(process, output_dir)` is called once the process started (to act on it
    mid-run); `framework`, `model_config`, `dataset_config`, `training_config` and `advanced_config` override
    TIMM_JOB.
    """

    def run(
        env: Mapping[str, str],
        *,
        cancel_after_checkpoint: bool = False,
        while_running: Callable[[subprocess.Popen[bytes], Path], None] | None = None,
        **job: Any,
    ) -> TrainRun:
        spec = {**TIMM_JOB, **job}
        job_id, token = backend.create_job(
            framework=spec["framework"],
            model=spec["model_config"]["name"],
            epochs=spec["training_config"]["epochs"],
            dataset=spec["dataset_config"]["name"],
        )
        output_dir = tmp_path / "runs" / job_id
        process_env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
        process_env.update(
            BACKEND_API_URL=backend.address,
            JOB_TELEMETRY_TOKEN=token,
            TP_DATA_DIR=str(tmp_path / "data"),
            HF_HUB_OFFLINE="1",
            **env,
        )
        command = [str(VENV_BIN / "tp-train"), "--job-id", job_id, "--framework", spec["framework"]]
        for name in ("model_config", "dataset_config", "training_config", "advanced_config"):
            command += [f"--{name.replace('_', '-')}", json.dumps(spec[name])]
        command += ["--output-dir", str(output_dir)]
        # cwd is the test's directory: a stray MLflow store (ultralytics' autologging) would appear there.
        process = subprocess.Popen(
            command, env=process_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if while_running is not None:
            while_running(process, output_dir)
        if cancel_after_checkpoint:
            checkpoint = output_dir / "weights" / "last.pt"
            deadline = time.monotonic() + 300
            while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=600)
        stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
        response = backend.jobs().GetJob(
            jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.internal_token), timeout=10
        )
        return TrainRun(job_id, process.returncode, stdout, stderr, output_dir, response.job)

    return run
