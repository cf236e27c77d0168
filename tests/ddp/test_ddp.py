"""Distributed data-parallel timm training under torchrun: 2 ranks on CPU (gloo), one job, telemetry once.

`tp-train` runs under the real `torchrun`, against a real backend, exactly as docs/distributed.md shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

TORCHRUN = Path(sys.executable).parent / "torchrun"
TESTS_DIR = Path(__file__).resolve().parent
EPOCHS = 2
BATCH_SIZE = 32
#: digits has 1437 training images; DistributedSampler gives each of 2 ranks ceil(1437 / 2) = 719.
STEPS_PER_EPOCH = -(-719 // BATCH_SIZE)
# Settings of the process running the tests that must not leak into the training processes.
_ISOLATED_PREFIXES = ("MLFLOW_", "AWS_", "TP_", "PYTEST_", "BACKEND_API_URL", "JOB_TELEMETRY_TOKEN", "INTERNAL_AUTH")


def start_torchrun(
    backend: BackendProcess, tmp_path: Path, framework: str, **env_overrides: str
) -> tuple[str, str, subprocess.Popen[str]]:
    """Creates a job (not dispatched) and starts `tp-train` on it with 2 ranks; returns (job id, token, torchrun)."""
    job_id, token = backend.create_job(epochs=EPOCHS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(
        BACKEND_API_URL=backend.address,
        JOB_TELEMETRY_TOKEN=token,
        OMP_NUM_THREADS="1",
        TP_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH")])),
        **env_overrides,
    )
    command = [
        str(TORCHRUN),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "trainingplatform_sdk.training.train",
        "--job-id",
        job_id,
        "--framework",
        framework,
        "--model-config",
        '{"name": "resnet10t", "image_size": 32}',
        "--dataset-config",
        '{"name": "digits"}',
        "--training-config",
        json.dumps({"epochs": EPOCHS, "log_every_n_steps": 1, "batch_size": BATCH_SIZE}),
        "--output-dir",
        str(tmp_path / "out"),
    ]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return job_id, token, process


def run_torchrun(
    backend: BackendProcess, tmp_path: Path, framework: str, **env_overrides: str
) -> tuple[str, str, subprocess.CompletedProcess[str]]:
    """`start_torchrun`, then waits for it to end; returns (job id, token, the finished process)."""
    job_id, token, process = start_torchrun(backend, tmp_path, framework, **env_overrides)
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    return job_id, token, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def get_job(backend: BackendProcess, job_id: str, token: str) -> jobs_pb2.Job:
    return backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(token), timeout=10).job


def log_records(backend: BackendProcess, job_id: str, token: str) -> list:
    request = jobs_pb2.ListLogsRequest(job_id=job_id, page_size=1000)
    return list(backend.jobs().ListLogs(request, metadata=auth(token), timeout=10).records)


def test_two_ranks_train_one_job_and_report_each_step_once(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token, done = run_torchrun(backend, tmp_path, "timm")
    assert done.returncode == 0, done.stderr[-5000:]

    # One job, one status history: rank 1 never reported a status.
    assert backend.job_status(job_id) == "COMPLETED"
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]

    # Each optimizer step reported once, by rank 0, as the mean of both ranks' batch losses.
    rows = backend.metric_rows(job_id)
    batch_steps = [step for _, key, _, step, _, _ in rows if key == "train/batch_loss"]
    assert batch_steps == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    keys = Counter(key for _, key, *_ in rows)
    assert keys["val/accuracy"] == keys["val/loss"] == keys["train/loss"] == EPOCHS
    # Validation covers the whole validation set once (360 images) with the sums of both ranks.
    accuracies = [value for _, key, value, *_ in rows if key == "val/accuracy"]
    assert all(round(value * 360) == pytest.approx(value * 360, abs=1e-6) for value in accuracies)
    assert accuracies[-1] > 0.8
    # One sender: no point arrived twice, none is missing.
    assert [sequence for sequence, *_ in rows] == list(range(1, len(rows) + 1))
    cursor = backend.cursor_row(job_id)
    assert cursor["duplicate_count"] == 0 and cursor["missing_count"] == 0

    # The backend's log records all come from rank 0, which names the world size and every rank's device.
    records = log_records(backend, job_id, token)
    assert records and {record.rank for record in records} == {0}
    assert [r.message for r in records if "world size 2" in r.message and "rank 1: cpu" in r.message]
    assert backend.cursor_row(job_id, "logs")["duplicate_count"] == 0
    # Every rank's own stderr lines name it.
    assert " rank 0/2 " in done.stderr and " rank 1/2 " in done.stderr

    # Checkpoints written once, by rank 0, without DDP's `module.` prefix; one MLflow run.
    weights = tmp_path / "out" / "weights"
    assert sorted(path.name for path in weights.iterdir()) == ["best.pt", "last.pt"]
    checkpoint = torch.load(weights / "last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STEPS_PER_EPOCH * EPOCHS
    assert not any(name.startswith("module.") for name in checkpoint["state_dict"])
    job = get_job(backend, job_id, token)
    client = MlflowClient(job.mlflow_tracking_uri)
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    assert [run.info.run_id for run in runs] == [job.mlflow_run_id]
    assert [m.step for m in client.get_metric_history(job.mlflow_run_id, "val/accuracy")] == [0, 1]
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["metrics"]["val/accuracy"] == accuracies[-1]


def test_a_failing_rank_fails_the_job_with_its_error(backend: BackendProcess, tmp_path: Path) -> None:
    job_id, token, done = run_torchrun(backend, tmp_path, "ddp_adapters:Rank1FailsAdapter", TP_MLFLOW_ENABLED="false")
    assert done.returncode != 0

    # torchrun tears the other ranks down when one fails: rank 0 reports FAILED with rank 1's error when it sees
    # the failure first; on a loaded machine torchrun may kill it before it can, and the job is left RUNNING for
    # whoever started torchrun to settle (docs/distributed.md). It never ends COMPLETED.
    events = backend.status_events(job_id)
    assert events in (["PENDING", "RUNNING", "FAILED"], ["PENDING", "RUNNING"]), events
    if events[-1] == "FAILED":
        job = get_job(backend, job_id, token)
        assert job.error_message == "rank 1: RuntimeError: rank 1 broke on purpose", job.error_message
        assert "rank 1 broke on purpose" in job.error_detail and "Rank 0 then failed with" in job.error_detail
    assert {record.rank for record in log_records(backend, job_id, token)} <= {0}


def test_sigterm_to_torchrun_stops_every_rank_at_the_same_step_and_cancels_the_job(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, _, process = start_torchrun(backend, tmp_path, "timm", TP_MLFLOW_ENABLED="false")
    try:
        # Once training reports, cancel as a trainer service would: SIGTERM to torchrun, which signals each rank.
        wait_until(lambda: any(key == "train/batch_loss" for _, key, *_ in backend.metric_rows(job_id)), timeout=120)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()

    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "CANCELLED"], stderr[-5000:]
    # Both ranks agreed on the step to stop at (one would otherwise wait for the other in the next all-reduce).
    stopped = re.findall(r"rank (\d)/2 \S+: Stopped during epoch \d+/\d+ at step (\d+)", stderr)
    assert sorted(rank for rank, _ in stopped) == ["0", "1"] and len({step for _, step in stopped}) == 1, stderr
    steps = [step for _, key, _, step, _, _ in backend.metric_rows(job_id) if key == "train/batch_loss"]
    assert steps == list(range(1, int(stopped[0][1]) + 1))
    assert (tmp_path / "out" / "weights" / "last.pt").is_file()


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
