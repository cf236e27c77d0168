"""An upload that fails after training fails the job, and what the job leaves behind says so: results.json in its
output directory says `failed`, with the storage error, and no results.json in the artifact store says
`completed`."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.proxy import ChaosProxy
from trainingplatform.common.v1 import common_pb2

#: tp-train loads `store_breaking_adapters:...` (beside this file), which builds on tests/trainers' fake_adapters.
TESTS_DIR = Path(__file__).resolve().parent.parent
ADAPTERS_PYTHONPATH = os.pathsep.join(str(TESTS_DIR / d) for d in ("tracking", "trainers"))

COUNTING_JOB = {
    "model_config": {"name": "counter"},
    "dataset_config": {"name": "numbers"},
    "training_config": {"epochs": 2},
    "advanced_config": {},
}
# One attempt per upload: an endpoint that fails here stays failed (TP_ARTIFACTS_UPLOAD_RETRY_S).
NO_MLFLOW = {"TP_MLFLOW_ENABLED": "false", "TP_ARTIFACTS_UPLOAD_RETRY_S": "0", "PYTHONPATH": ADAPTERS_PYTHONPATH}


@pytest.fixture
def backend(backend: BackendProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[BackendProcess]:
    """The shared backend, whose jobs are created as framework `counting`: a job's spec takes a framework's name,
    `tp-train` the adapter's `module:Class` path."""
    create_job = backend.create_job
    monkeypatch.setattr(backend, "create_job", lambda framework, **job: create_job("counting", **job))
    yield backend


def results_on_disk(run) -> dict:
    return json.loads((run.output_dir / "results.json").read_text(encoding="utf-8"))


def test_an_s3_endpoint_gone_after_training_leaves_a_failed_results_json(run_training, s3, tmp_path) -> None:
    # The trainer reaches SeaweedFS through a proxy, closed once training ended: the endpoint's port then refuses
    # every connection. Its URL holds credentials, which botocore repeats in its error.
    with ChaosProxy(f"127.0.0.1:{s3.port}", seed=0) as proxy:
        closer = threading.Thread(target=close_when_trained, args=(proxy, tmp_path / "runs"), daemon=True)
        closer.start()
        run = run_training(
            {**s3.env(), "AWS_S3_ENDPOINT_URL": f"http://u:pw-s3cr3t@{proxy.address}", **NO_MLFLOW},
            framework="store_breaking_adapters:EndpointClosingAdapter",
            **COUNTING_JOB,
        )
        closer.join(10)

    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    expected = f"AWS_S3_ENDPOINT_URL=http://{proxy.address} is not reachable (uploading best.pt"
    assert expected in run.job.error_message
    results = results_on_disk(run)
    assert results["status"] == "failed"
    assert expected in results["error"]
    assert results["epochs_completed"] == 2  # what was trained is still said
    assert "pw-s3cr3t" not in json.dumps(results) and s3.secret_key not in json.dumps(results)
    prefix = f"jobs/{run.job_id}/{run.output_dir.name}/"
    assert s3.keys(prefix) == [prefix + "config.json"]  # stored at job start, before the endpoint went away
    assert "results" not in run.artifacts


def close_when_trained(proxy: ChaosProxy, runs_dir: Path) -> None:
    """Closes the proxy once a job's adapter wrote `trained` in its output dir (the adapter then waits for it)."""
    deadline = time.monotonic() + 120
    while not list(runs_dir.glob("*/trained")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proxy.close()


def test_a_failed_upload_after_results_json_was_stored_overwrites_it(run_training, tmp_path) -> None:
    """Local storage: the checkpoints and results.json are stored, then results.csv cannot be: the stored
    results.json said `completed` for a FAILED job."""
    run = run_training(NO_MLFLOW, framework="store_breaking_adapters:CsvBlockingAdapter", **COUNTING_JOB)

    assert run.returncode == 1, run.stderr[-3000:]
    assert run.job.status == common_pb2.JOB_STATUS_FAILED
    assert "results.csv failed: Is a directory" in run.job.error_message
    results = results_on_disk(run)
    assert results["status"] == "failed"
    assert "results.csv failed: Is a directory" in results["error"]
    stored = tmp_path / "data" / "artifacts" / run.job_id / run.output_dir.name / "results.json"
    assert json.loads(stored.read_text(encoding="utf-8")) == results
    assert run.artifacts["results"] == stored.as_uri()
