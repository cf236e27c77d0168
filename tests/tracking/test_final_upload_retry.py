"""The final uploads of a completed job outlast a short S3 outage (retries with backoff for
TP_ARTIFACTS_UPLOAD_RETRY_S); an outage that outlasts them fails the job with a message saying where the files still
are, and the MLflow run, when MLflow is up, still gets the checkpoint. JobRecorder runs in this process against a
real SeaweedFS (behind a proxy that refuses connections) and a real MLflow server: no training needed."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.proxy import ChaosProxy
from trainer_service.trainer_process import wait_until
from trainingplatform_sdk.training.adapter import NullSink, Status, TrainingResult
from trainingplatform_sdk.training.artifacts import MULTIPART_THRESHOLD, StorageError
from trainingplatform_sdk.training.recorder import JobRecorder, RecorderSettings, StopRequested

PASSWORD = "pw-s3cr3t"


class Lines(NullSink):
    """Keeps the job's log lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def log_message(self, message: str, level: str = "INFO", epoch: int | None = None, step: int | None = None) -> None:
        self.lines.append((level, message))


@pytest.fixture
def proxy(s3) -> Iterator[ChaosProxy]:
    with ChaosProxy(f"127.0.0.1:{s3.port}", seed=0) as proxy:
        yield proxy


def start(s3, proxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[JobRecorder, Lines, Path]:
    settings = {
        **s3.env(),
        "AWS_S3_ENDPOINT_URL": f"http://u:{PASSWORD}@{proxy.address}",
        "TP_DATA_DIR": str(tmp_path),
        "TP_MLFLOW_ENABLED": "false",
        **env,
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)  # boto3 reads the credentials; redaction reads the secrets
    output_dir = tmp_path / "runs" / "job-1"
    (output_dir / "weights").mkdir(parents=True)
    (output_dir / "weights" / "best.pt").write_bytes(b"w" * 4096)
    lines = Lines()
    recorder = JobRecorder.start(
        RecorderSettings.from_env(settings, output_dir=output_dir),
        job_id="job-1",
        framework="timm",
        configs={"model": {"name": "m"}},
        output_dir=output_dir,
        logger=lines,
    )
    return recorder, lines, output_dir


def completed(output_dir: Path) -> TrainingResult:
    return TrainingResult(status=Status.COMPLETED, epochs_completed=3, best_checkpoint=output_dir / "weights/best.pt")


def test_an_s3_outage_shorter_than_the_retry_budget_does_not_fail_the_job(s3, proxy, tmp_path, monkeypatch) -> None:
    recorder, lines, output_dir = start(s3, proxy, tmp_path, monkeypatch, TP_ARTIFACTS_UPLOAD_RETRY_S="120")
    proxy.pause()  # S3 restarts: every connection refused ...
    proxy.cut_all()
    resume = threading.Timer(2.0, proxy.resume)  # ... for 2 s
    resume.start()
    try:
        recorder.finish(completed(output_dir))
    finally:
        resume.cancel()
        proxy.resume()

    stored = s3.client().get_object(Bucket=s3.bucket, Key=recorder.artifacts["results"].split("/", 3)[3])
    assert json.loads(stored["Body"].read())["status"] == "completed"
    assert "best_checkpoint" in recorder.artifacts
    warnings = [message for level, message in lines.lines if level == "WARNING"]
    assert warnings, lines.lines
    assert all("retrying in" in message and "TP_ARTIFACTS_UPLOAD_RETRY_S" in message for message in warnings)
    assert not any(PASSWORD in message or s3.secret_key in message for message in warnings)


def test_an_s3_outage_longer_than_the_budget_fails_naming_the_local_copy_and_mlflow_still_gets_it(
    s3, proxy, mlflow_server, tmp_path, monkeypatch
) -> None:
    recorder, lines, output_dir = start(
        s3,
        proxy,
        tmp_path,
        monkeypatch,
        TP_ARTIFACTS_UPLOAD_RETRY_S="0",
        TP_MLFLOW_ENABLED="true",
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        MLFLOW_EXPERIMENT_NAME="final-upload-retry",
    )
    proxy.close()  # S3 gone for good: refused

    with pytest.raises(StorageError) as raised:
        recorder.finish(completed(output_dir))

    message = str(raised.value)
    assert f"on host {socket.gethostname()}, in {output_dir / 'weights' / 'best.pt'}" in message
    assert PASSWORD not in message
    assert not any(level == "WARNING" for level, _ in lines.lines)  # 0: one attempt, no retry
    assert recorder.run is not None
    client = recorder.run.client
    stored = {a.path for a in client.list_artifacts(recorder.run.run_id)}
    stored |= {a.path for a in client.list_artifacts(recorder.run.run_id, "checkpoints")}
    assert {"checkpoints/best.pt", "results.json", "config.json"} <= stored
    assert client.get_run(recorder.run.run_id).info.status == "FAILED"


def test_a_large_upload_cut_midway_leaves_no_stale_parts_once_a_retry_stored_it(
    s3, proxy, tmp_path, monkeypatch
) -> None:
    """The endpoint went away during a multipart upload, so boto3 could not abort it: its parts stayed in the bucket,
    invisible and billed, after the retry stored the file."""
    recorder, lines, output_dir = start(s3, proxy, tmp_path, monkeypatch, TP_ARTIFACTS_UPLOAD_RETRY_S="120")
    checkpoint = output_dir / "weights" / "best.pt"
    content = os.urandom(6 * MULTIPART_THRESHOLD)
    checkpoint.write_bytes(content)
    key = "jobs/job-1/job-1/weights/best.pt"
    client = s3.client()

    def cut_once_parts_flow() -> None:
        wait_until(lambda: client.list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads"), timeout=60)
        proxy.stall()  # S3 goes away mid-upload ...
        proxy.pause()
        proxy.cut_all()
        time.sleep(2.0)  # ... for 2 s
        proxy.unstall()
        proxy.resume()

    cutter = threading.Thread(target=cut_once_parts_flow, daemon=True)
    cutter.start()
    recorder.finish(completed(output_dir))
    cutter.join(30)

    assert any("retrying in" in message for level, message in lines.lines if level == "WARNING"), lines.lines
    assert client.get_object(Bucket=s3.bucket, Key=key)["Body"].read() == content
    assert client.list_multipart_uploads(Bucket=s3.bucket, Prefix=key).get("Uploads", []) == []


def test_the_retry_budget_must_be_seconds(tmp_path) -> None:
    with pytest.raises(StorageError, match="TP_ARTIFACTS_UPLOAD_RETRY_S='soon' is not a number of seconds >= 0"):
        RecorderSettings.from_env({"TP_ARTIFACTS_UPLOAD_RETRY_S": "soon"}, output_dir=tmp_path)


@pytest.mark.parametrize("storage", ["s3", "local"])
def test_a_superseded_attempt_of_the_job_does_not_overwrite_the_current_ones_files(
    storage, s3, tmp_path, monkeypatch
) -> None:
    # The trainer service runs each dispatch attempt in `<runs>/<job_id>/<run_id>`; the superseded attempt (on a
    # trainer the backend lost touch with) is cancelled only after the current one completed.
    env = {"TP_MLFLOW_ENABLED": "false", "TP_DATA_DIR": str(tmp_path / "data")}
    if storage == "s3":
        env.update(s3.env())
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    def attempt(run_id: str) -> tuple[JobRecorder, Path]:
        output_dir = tmp_path / "runs" / "job-2" / run_id
        (output_dir / "weights").mkdir(parents=True)
        (output_dir / "weights" / "last.pt").write_text(f"weights of {run_id}")
        recorder = JobRecorder.start(
            RecorderSettings.from_env(env, output_dir=output_dir),
            job_id="job-2",
            framework="timm",
            configs={},
            output_dir=output_dir,
            logger=NullSink(),
        )
        return recorder, output_dir

    current, current_dir = attempt("run-b")
    stale, stale_dir = attempt("run-a")
    last = current_dir / "weights/last.pt"
    current.finish(TrainingResult(status=Status.COMPLETED, epochs_completed=3, last_checkpoint=last))
    stale.abort(Status.CANCELLED, last_checkpoint=stale_dir / "weights/last.pt")

    def read(uri: str) -> bytes:
        if uri.startswith("file://"):
            return Path(uri.removeprefix("file://")).read_bytes()
        key = uri.removeprefix(f"s3://{s3.bucket}/")
        return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()

    assert read(current.artifacts["last_checkpoint"]) == b"weights of run-b"
    assert json.loads(read(current.artifacts["results"]))["status"] == "completed"
    assert read(stale.artifacts["last_checkpoint"]) == b"weights of run-a"
    assert "/job-2/run-b/" in current.artifacts["results"]


def test_a_cancel_between_retries_stops_them_and_the_job_ends_cancelled(
    s3, proxy, mlflow_server, tmp_path, monkeypatch
) -> None:
    recorder, lines, output_dir = start(
        s3,
        proxy,
        tmp_path,
        monkeypatch,
        TP_ARTIFACTS_UPLOAD_RETRY_S="600",
        TP_MLFLOW_ENABLED="true",
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        MLFLOW_EXPERIMENT_NAME="final-upload-retry",
    )
    assert recorder.run is not None
    (output_dir / "weights" / "last.pt").write_bytes(b"l" * 4096)
    result = TrainingResult(
        status=Status.COMPLETED,
        epochs_completed=3,
        best_checkpoint=output_dir / "weights/best.pt",
        last_checkpoint=output_dir / "weights/last.pt",
    )
    proxy.close()  # S3 gone for longer than the first retries
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def finish() -> None:
        try:
            recorder.finish(result, stop=stop.is_set)
            outcome.append(None)
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    def retries() -> list[str]:
        return [m for level, m in lines.lines if level == "WARNING" and "retrying in" in m]

    finishing = threading.Thread(target=finish, daemon=True)
    finishing.start()
    wait_until(lambda: len(retries()) >= 2, timeout=30)  # 1 s, then 2 s: waiting to retry again
    stop.set()  # tp-train's SIGTERM handler sets this
    finishing.join(timeout=60)  # a guard against a hang, far below the 600 s budget
    assert not finishing.is_alive(), "the retries went on after the cancel"
    retried = len(retries())

    # As tp-train does: a cancel during finish is StopRequested, then abort(CANCELLED); not StorageError (FAILED).
    assert len(outcome) == 1 and isinstance(outcome[0], StopRequested), outcome
    recorder.abort(Status.CANCELLED, result=result)

    assert len(retries()) == retried  # no retry after the cancel
    # Nothing reached the store: no URI claims it did (docs/tracking.md, "Cancelled while the results are stored").
    assert set(recorder.artifacts) == {"config"}
    local = json.loads((output_dir / "results.json").read_text())
    assert local["status"] == "cancelled" and "error" not in local
    client = recorder.run.client
    assert client.get_run(recorder.run.run_id).info.status == "KILLED"
    stored = {a.path for a in client.list_artifacts(recorder.run.run_id)}
    stored |= {a.path for a in client.list_artifacts(recorder.run.run_id, "checkpoints")}
    # MLflow is up while S3 is not: the cancelled run still gets the last checkpoint and results.json, as when S3
    # is up ("the last checkpoint and results.json are stored best effort").
    assert {"checkpoints/last.pt", "results.json", "config.json"} <= stored
    mlflow_results = Path(client.download_artifacts(recorder.run.run_id, "results.json", str(tmp_path / "dl")))
    assert json.loads(mlflow_results.read_text())["status"] == "cancelled"
    assert not any(PASSWORD in m or s3.secret_key in m for _, m in lines.lines)
