"""A cancel that reaches the trainer while its run stores its results (training done, uploads to S3 and MLflow under
way), or once they are stored but before its COMPLETED reached the backend, ends the job CANCELLED everywhere: the
backend's job, the trainer's run, results.json (on the trainer's disk and in the artifact store) and the MLflow run
(KILLED). Nothing is left claiming the job completed.

Real parts: a backend dispatching to a real trainer service, whose training process uploads to a real SeaweedFS
through a ChaosProxy (stalled at the final upload, so the cancel lands in that window) and to a real MLflow server,
and sends its telemetry through another ChaosProxy (stalled to hold its COMPLETED while the cancel is committed).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from support.backend import BackendProcess, auth, free_port
from support.proxy import ChaosProxy
from trainer_service.trainer_process import TrainerProcess, wait_until
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2
from trainingplatform_sdk.training.train import EXIT_CANCELLED

TESTS_DIR = Path(__file__).resolve().parent.parent
ADAPTERS_PYTHONPATH = os.pathsep.join(str(TESTS_DIR / d) for d in ("tracking", "trainers"))


@pytest.fixture
def s3_proxy(s3) -> Iterator[ChaosProxy]:  # type: ignore[no-untyped-def]
    with ChaosProxy(f"127.0.0.1:{s3.port}", seed=0) as proxy:
        yield proxy


@pytest.fixture
def trainer(tmp_path: Path, s3, s3_proxy: ChaosProxy, mlflow_server) -> Iterator[TrainerProcess]:  # type: ignore[no-untyped-def]
    """A timm trainer service whose runs train with TrainedMarkingAdapter (they wait for `broken` after training)
    and store their results in S3 through the proxy and in the MLflow server."""
    env = {
        **s3.env(),
        "AWS_S3_ENDPOINT_URL": f"http://{s3_proxy.address}",
        "MLFLOW_TRACKING_URI": mlflow_server.uri,
        "MLFLOW_EXPERIMENT_NAME": "cancel-at-final-upload",
        "TP_TRAINER_ADAPTER": "store_breaking_adapters:TrainedMarkingAdapter",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), ADAPTERS_PYTHONPATH]),
        "TP_CANCEL_GRACE_S": "60",
    }
    process = TrainerProcess(tmp_path / "trainer", env=env).start()
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def backend_port() -> int:
    return free_port()


@pytest.fixture
def telemetry_proxy(backend_port: int) -> Iterator[ChaosProxy]:
    """What the trainer's runs take for the backend (TP_TELEMETRY_ENDPOINT): a proxy to `dispatching_backend`."""
    with ChaosProxy(f"127.0.0.1:{backend_port}", seed=0) as proxy:
        yield proxy


@pytest.fixture
def dispatching_backend(
    tmp_path: Path, trainer: TrainerProcess, telemetry_proxy: ChaosProxy, backend_port: int
) -> Iterator[BackendProcess]:
    """A backend that dispatches timm jobs to `trainer` (sharing its service token); the runs' telemetry comes
    through `telemetry_proxy`."""
    process = BackendProcess(
        f"sqlite:///{tmp_path / 'backend.db'}",
        tmp_path / "backend",
        port=backend_port,
        extra_env={"TP_TRAINERS": f"timm={trainer.address}", "TP_TELEMETRY_ENDPOINT": telemetry_proxy.address},
    )
    process.internal_token = trainer.token
    process.start()
    try:
        yield process
    finally:
        process.close()


def test_a_cancel_during_the_final_upload_ends_every_record_cancelled(
    dispatching_backend: BackendProcess, trainer: TrainerProcess, s3_proxy: ChaosProxy, s3, mlflow_server
) -> None:
    backend, metadata = dispatching_backend, auth(dispatching_backend.internal_token)
    job_id = backend.jobs().CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30).job.job_id
    run = wait_until(lambda: _run_of(trainer, job_id), 60, "the trainer to start the job")
    output_dir = Path(run.output_dir)
    wait_until(lambda: (output_dir / "trained").exists(), 120, "training to end")

    # The final upload starts against a stalled endpoint: the cancel lands while it is under way.
    s3_proxy.stall()
    (output_dir / "broken").touch()
    time.sleep(1.0)  # the adapter sees `broken` within 50 ms and the upload of best.pt begins, and hangs
    cancelled = backend.jobs().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=30)
    assert cancelled.job.status == common_pb2.JOB_STATUS_CANCELLED
    wait_until(lambda: (output_dir / "stop_reason").exists(), 30, "the trainer to be asked to stop")
    time.sleep(0.5)  # the training process has the signal; the stalled upload is still under way
    s3_proxy.unstall()

    log = assert_cancelled_everywhere(backend, trainer, run, s3, mlflow_server)
    assert "Training cancelled after 1 epoch(s), while its results were stored" in log


def test_a_cancel_committed_before_the_completed_status_arrived_ends_every_record_cancelled(
    dispatching_backend: BackendProcess, trainer: TrainerProcess, telemetry_proxy: ChaosProxy, s3, mlflow_server
) -> None:
    """The results are stored and the MLflow run FINISHED, but the job's COMPLETED is held on its way to the
    backend when the cancel is committed there: the backend refuses COMPLETED, and the run's records follow it."""
    backend, metadata = dispatching_backend, auth(dispatching_backend.internal_token)
    job_id = backend.jobs().CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30).job.job_id
    run = wait_until(lambda: _run_of(trainer, job_id), 60, "the trainer to start the job")
    output_dir = Path(run.output_dir)
    wait_until(lambda: (output_dir / "trained").exists(), 120, "training to end")
    mlflow_run_id = wait_until(lambda: _job(backend, job_id).mlflow_run_id, 30, "the job's MLflow run id")
    mlflow = MlflowClient(mlflow_server.uri)

    telemetry_proxy.stall()  # what the training process sends from now on waits, its COMPLETED included
    (output_dir / "broken").touch()
    wait_until(lambda: mlflow.get_run(mlflow_run_id).info.status == "FINISHED", 60, "the results to be stored")
    cancelled = backend.jobs().CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=30)
    assert cancelled.job.status == common_pb2.JOB_STATUS_CANCELLED
    wait_until(lambda: (output_dir / "stop_reason").exists(), 30, "the trainer to be asked to stop")
    time.sleep(0.5)  # the training process has the signal, its COMPLETED not yet delivered
    telemetry_proxy.unstall()

    log = assert_cancelled_everywhere(backend, trainer, run, s3, mlflow_server)
    assert "the backend had cancelled the job before COMPLETED came" in log


SPEC = common_pb2.JobSpec(
    framework="timm",
    model=common_pb2.ModelConfig(name="resnet10t", image_size=32),
    dataset=common_pb2.DatasetConfig(name="digits"),
    training=common_pb2.TrainingConfig(epochs=1, device="cpu"),
)


def assert_cancelled_everywhere(  # type: ignore[no-untyped-def]
    backend: BackendProcess, trainer: TrainerProcess, run: trainer_pb2.TrainingRun, s3, mlflow_server
) -> str:
    """Waits for the run to end; checks that every record of its job says cancelled. Returns its train.log."""
    ended = trainer.wait_state(run.run_id, trainer_pb2.RUN_STATE_CANCELLED, timeout=120)
    log = trainer.train_log(ended)
    assert ended.exit_code == EXIT_CANCELLED, log[-3000:]
    job = _job(backend, run.job_id)
    assert job.status == common_pb2.JOB_STATUS_CANCELLED

    output_dir = Path(run.output_dir)
    local = json.loads((output_dir / "results.json").read_text())
    assert local["status"] == "cancelled", log[-3000:]
    prefix = f"jobs/{run.job_id}/{output_dir.name}/"  # the run's own folder: its run id
    stored = s3.client().get_object(Bucket=s3.bucket, Key=prefix + "results.json")["Body"].read()
    assert json.loads(stored) == local
    artifacts = {artifact.name: artifact.uri for artifact in job.artifacts}
    assert artifacts["results"] == f"s3://{s3.bucket}/{prefix}results.json"
    # Every stored file is whole and reported, and nothing reported is missing.
    stored_keys = s3.keys(prefix)
    assert stored_keys == sorted(uri.removeprefix(f"s3://{s3.bucket}/") for uri in artifacts.values())
    for key in stored_keys:
        body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert body == (output_dir / key.removeprefix(prefix)).read_bytes(), key

    mlflow = MlflowClient(mlflow_server.uri)
    assert mlflow.get_run(job.mlflow_run_id).info.status == "KILLED"
    results = mlflow.download_artifacts(job.mlflow_run_id, "results.json", str(output_dir / "from-mlflow"))
    assert json.loads(Path(results).read_text()) == local
    return log


def _job(backend: BackendProcess, job_id: str) -> jobs_pb2.Job:
    request = jobs_pb2.GetJobRequest(job_id=job_id)
    return backend.jobs().GetJob(request, metadata=auth(backend.internal_token), timeout=10).job


def _run_of(trainer: TrainerProcess, job_id: str) -> trainer_pb2.TrainingRun | None:
    runs = [run for run in trainer.list_all() if run.job_id == job_id and run.output_dir]
    return runs[0] if runs else None
