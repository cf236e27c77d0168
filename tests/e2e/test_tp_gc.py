"""`tp gc` as a subprocess against a real backend (SQLite, no trainer service): what it may delete.

- a job's reported MLflow run id is a name, never a pattern or a path: `*`, `..` and the like (which the backend now
  refuses, but a database may hold from before) delete nothing of the data directory (its MLflow store, its tokens,
  other jobs' files); only a plain MLflow run id (32 lowercase hex) of a job whose tracking URI is the data
  directory's own store has its `mlartifacts` copy deleted;
- a job that ended at the backend while its training process lives (CANCELLED during the cancel grace, FAILED by
  the lease) keeps its files: a run directory whose run.json is missing (and that changed in the last day), not
  reported, names a live process, or whose mlflow_run.json names a run not ended, is skipped with the reason said.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.trainer_service.run import process_start_time

RUN_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class Stack:
    backend: BackendProcess
    data_dir: Path
    root: Path

    def gc(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = backend_env(self.backend, self.root / "no-config.json", TP_DATA_DIR=str(self.data_dir))
        return subprocess.run([TP, "gc", *args], capture_output=True, text=True, env=env, timeout=60)

    def ended_job(self, *, run_id: str = "", tracking_uri: str = "", stored: bool = False) -> str:
        """A new CANCELLED job, with `run_id` and `tracking_uri` reported with its telemetry token when given; with
        `stored`, the run id is written to the database instead, as a backend that took any run id stored it (one
        now refuses what is not MLflow's form)."""
        with JobsClient(self.backend.address, self.backend.internal_token) as client:
            created = client.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=1, dispatch=False)
            job_id = created.job.job_id
            if run_id:
                logger = TrainingLogger(
                    job_id,
                    backend_address=self.backend.address,
                    token=created.telemetry_token,
                    spool_dir=self.root / "spool" / job_id,
                )
                reported = "" if stored else run_id
                logger.report_run_info(mlflow_run_id=reported, mlflow_tracking_uri=tracking_uri, artifacts={})
                logger.close(timeout=10)
                if stored:
                    engine = create_engine(self.backend.database_url)
                    with engine.begin() as connection:
                        update = text("UPDATE jobs SET mlflow_run_id = :run WHERE job_id = :job")
                        connection.execute(update, {"run": run_id, "job": job_id})
                    engine.dispose()
                assert client.get_job(job_id).mlflow_run_id == run_id
            client.cancel_job(job_id, "test")
        return job_id

    def run_dir(self, job_id: str, run: str = "r1", **saved: object) -> Path:
        """`runs/<job>/<run>` with a run.json of `saved` (a reported run of a process long gone by default)."""
        path = self.data_dir / "runs" / job_id / run
        path.mkdir(parents=True)
        record = {"run_id": run, "job_id": job_id, "state": 4, "pid": 0, "pid_start_time": 0, "reported": True}
        (path / "run.json").write_text(json.dumps({**record, **saved}))
        (path / "last.pt").write_bytes(b"x" * 1000)
        return path


@pytest.fixture
def stack(module_backend: BackendProcess, tmp_path: Path) -> Stack:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    return Stack(module_backend, data_dir, tmp_path)


def test_a_reported_run_id_is_never_a_pattern_or_a_path(stack: Stack) -> None:
    data = stack.data_dir
    local = f"sqlite:///{data / 'mlflow.db'}"
    kept = [
        data / "mlflow.db",
        data / "frontend_auth_token",
        data / "mlartifacts" / "1" / ("a" * 32) / "artifacts" / "best.pt",
        data / "mlartifacts" / ("b" * 32) / "artifacts" / "best.pt",
        data / "runs" / "other-job" / "r" / "run.json",
        data / "artifacts" / "other-job" / "best.pt",
        stack.root / "outside" / "keep.txt",
    ]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    hostile = ["*", "..", "../..", "*/..", "1", "../outside", RUN_ID.upper(), RUN_ID + "/..", "." * 32]
    jobs = [stack.ended_job(run_id=run_id, tracking_uri=local, stored=True) for run_id in hostile]
    # A plain run id, but of another store: its copy here (if any) is not this job's.
    jobs.append(stack.ended_job(run_id="a" * 32, tracking_uri="http://mlflow:5000"))
    jobs.append(stack.ended_job(run_id="b" * 32, tracking_uri="sqlite:////elsewhere/mlflow.db"))
    for job_id in jobs:
        stack.run_dir(job_id)
    (data / "artifacts" / jobs[0]).symlink_to(stack.root / "outside")  # never followed out of artifacts/
    result = stack.gc("--keep", "0")
    assert result.returncode == 0, result.stderr
    missing = [str(path) for path in kept if not path.exists()]
    assert not missing, (missing, result.stdout)
    for job_id in jobs:
        assert not (data / "runs" / job_id).exists(), result.stdout
    assert "not an MLflow run id" in result.stdout, result.stdout


def test_a_plain_run_id_of_this_store_has_its_mlflow_artifacts_deleted(stack: Stack) -> None:
    data = stack.data_dir
    ours = [data / "mlartifacts" / "3" / RUN_ID, data / "mlartifacts" / RUN_ID]
    others = [data / "mlartifacts" / "3" / ("c" * 32), data / "mlartifacts" / "3" / "meta.yaml"]
    for path in ours:
        (path / "artifacts").mkdir(parents=True)
        (path / "artifacts" / "best.pt").write_bytes(b"x" * 2000)
    for path in others:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("keep")
    job_id = stack.ended_job(run_id=RUN_ID, tracking_uri=f"sqlite:///{data / 'mlflow.db'}")
    stack.run_dir(job_id)
    (data / "artifacts" / job_id).mkdir(parents=True)
    dry = stack.gc("--keep", "0", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would delete {job_id}" in dry.stdout and all(str(path) in dry.stdout for path in ours), dry.stdout
    assert all(path.exists() for path in ours)
    result = stack.gc("--keep", "0")
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in ours), result.stdout
    assert all(path.exists() for path in others), result.stdout
    assert not (data / "runs" / job_id).exists() and not (data / "artifacts" / job_id).exists(), result.stdout


def test_the_files_of_a_run_still_in_use_stay(stack: Stack) -> None:
    data = stack.data_dir
    me, me_started = os.getpid(), process_start_time(os.getpid())
    gone = subprocess.Popen(["true"])
    gone.wait()
    cases = {
        "not reported": {"reported": False, "pid": me, "pid_start_time": me_started},
        "alive": {"pid": me, "pid_start_time": me_started},
        "mlflow open": {"pid": gone.pid, "pid_start_time": 1},
    }
    skipped: dict[str, str] = {}
    for why, saved in cases.items():
        job_id = stack.ended_job()
        run = stack.run_dir(job_id, **saved)
        if why == "mlflow open":
            (run / "mlflow_run.json").write_text(json.dumps({"run_id": RUN_ID, "tracking_uri": "x", "ended": None}))
        (data / "artifacts" / job_id).mkdir(parents=True)
        skipped[why] = job_id
    starting = stack.ended_job()
    (data / "runs" / starting / "r1").mkdir(parents=True)  # no run.json yet: its trainer is starting it
    skipped["no run.json"] = starting
    # A start that never finished (its trainer died between making the directory and writing run.json), long ago.
    abandoned = stack.ended_job()
    stale = data / "runs" / abandoned / "r1"
    (stale / "weights").mkdir(parents=True)
    (stale / "train.log").write_text("")
    day_ago = time.time() - 24 * 3600 - 60
    for path in (stale / "weights", stale / "train.log", stale):
        os.utime(path, (day_ago, day_ago))
    # One job with an ended run beside a live one keeps both: its artifacts may still be written.
    mixed = stack.ended_job()
    stack.run_dir(mixed, "old", pid=gone.pid, pid_start_time=1)
    stack.run_dir(mixed, "new", reported=False, pid=me, pid_start_time=me_started)
    skipped["mixed"] = mixed
    done = stack.ended_job()
    run = stack.run_dir(done, pid=gone.pid, pid_start_time=1)
    (run / "mlflow_run.json").write_text(json.dumps({"run_id": RUN_ID, "tracking_uri": "x", "ended": "KILLED"}))
    result = stack.gc("--keep", "0")
    assert result.returncode == 0, result.stderr
    assert not (data / "runs" / done).exists(), result.stdout
    assert not (data / "runs" / abandoned).exists(), result.stdout
    for why, job_id in skipped.items():
        assert (data / "runs" / job_id).exists(), (why, result.stdout)
        assert f"skipping {job_id}" in result.stdout, (why, result.stdout)
    for why in cases:
        assert (data / "artifacts" / skipped[why]).exists(), (why, result.stdout)
    out = result.stdout
    assert "not reported" in out and "alive" in out and "MLflow run" in out and "no run.json" in out, out
    assert "5 skipped" in out, out
