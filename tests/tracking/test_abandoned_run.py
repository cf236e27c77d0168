"""`python -m trainingplatform_sdk.training.abandoned_run`, which the trainer service runs when a training process
died before it could end its MLflow run (tests/trainer_service/test_runs.py covers it under the service): it ends
only a run left RUNNING in the store the process used, and says so in one line that holds no credentials. A process
killed as soon as its run exists has left the record that names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient
from support.backend import free_port
from support.proxy import ChaosProxy
from trainingplatform_sdk.training.recorder import end_abandoned_run


def _run(output_dir: Path, status: str, reason: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "TP_"))}
    command = [sys.executable, "-m", "trainingplatform_sdk.training.abandoned_run", str(output_dir), status, reason]
    return subprocess.run(command, capture_output=True, text=True, env={**clean, **env}, timeout=120)


def _store(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=tmp_path.as_uri())).info.run_id
    return uri, client, run_id


def _record(output_dir: Path, run_id: str, uri: str, ended: str | None = None) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {"run_id": run_id, "tracking_uri": uri, "ended": ended}
    (output_dir / "mlflow_run.json").write_text(json.dumps(record))


def test_a_run_left_running_is_ended_with_the_reason(tmp_path: Path) -> None:
    uri, client, run_id = _store(tmp_path)
    _record(tmp_path / "run", run_id, uri)

    done = _run(tmp_path / "run", "KILLED", "cancelled by CancelTraining", MLFLOW_TRACKING_URI=uri)

    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    died = "its training process died before it could (cancelled by CancelTraining)"
    assert done.stdout == f"MLflow run {run_id} ended KILLED: {died}\n"
    run = client.get_run(run_id)
    assert (run.info.status, run.data.tags["end_reason"]) == ("KILLED", "cancelled by CancelTraining")
    assert json.loads((tmp_path / "run" / "mlflow_run.json").read_text())["ended"] == "KILLED"
    again = _run(tmp_path / "run", "FAILED", "twice", MLFLOW_TRACKING_URI=uri)
    assert (again.returncode, again.stdout) == (0, "")
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_run_the_process_ended_or_another_store_is_left_alone(tmp_path: Path) -> None:
    uri, client, run_id = _store(tmp_path)
    _record(tmp_path / "ended", run_id, uri, ended="FINISHED")
    assert _run(tmp_path / "ended", "FAILED", "x", MLFLOW_TRACKING_URI=uri).stdout == ""

    _record(tmp_path / "moved", run_id, "http://mlflow.example:5000")
    moved = _run(tmp_path / "moved", "FAILED", "x", MLFLOW_TRACKING_URI=uri)
    assert moved.returncode == 0
    assert "the service's MLflow setting changed" in moved.stdout
    assert client.get_run(run_id).info.status == "RUNNING"
    assert _run(tmp_path / "nothing", "FAILED", "x", MLFLOW_TRACKING_URI=uri).stdout == ""  # tracking was off


def test_an_unreachable_store_is_one_line_without_its_credentials(tmp_path: Path) -> None:
    port = free_port()
    _record(tmp_path / "run", "0123456789abcdef", f"http://127.0.0.1:{port}")  # as recorded: no credentials
    uri = f"http://user:s3cret@127.0.0.1:{port}"

    done = _run(tmp_path / "run", "FAILED", "x", MLFLOW_TRACKING_URI=uri)

    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("the MLflow run of ") and "is left RUNNING" in done.stdout, done.stdout
    assert "s3cret" not in done.stdout + done.stderr


def test_a_process_killed_while_its_new_run_logs_its_params_leaves_the_record_that_names_the_run(
    run_training, s3, mlflow_server
) -> None:
    """The run is created, then its params are logged (4,000 here: 40 requests) and config.json is uploaded to it:
    a process killed meanwhile (SIGKILL after a cancel's grace, the OOM killer) left no mlflow_run.json, and its run
    RUNNING for ever."""
    experiment = "killed-at-start"
    client = MlflowClient(mlflow_server.uri)
    with ChaosProxy(f"127.0.0.1:{mlflow_server.port}", seed=0) as proxy:

        def kill_once_the_run_exists(process: subprocess.Popen[bytes], output_dir: Path) -> None:
            deadline = time.monotonic() + 120
            while process.poll() is None and time.monotonic() < deadline:
                found = client.get_experiment_by_name(experiment)
                runs = client.search_runs([found.experiment_id]) if found is not None else []
                if runs and runs[0].data.params:  # the process got its run's id: it is logging the params
                    proxy.stall()  # the process waits on MLflow
                    process.kill()
                    return
                time.sleep(0.02)

        env = {**s3.env(), "MLFLOW_TRACKING_URI": f"http://{proxy.address}", "MLFLOW_EXPERIMENT_NAME": experiment}
        run = run_training(
            env,
            while_running=kill_once_the_run_exists,
            advanced_config={"extra": {f"option_{i:04d}": i for i in range(4000)}},
        )
        proxy.unstall()
        assert run.returncode == -9, run.stderr[-3000:]
        (mlflow_run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert mlflow_run.info.status == "RUNNING"

        line = end_abandoned_run(run.output_dir, "KILLED", "killed by signal 9 (SIGKILL)", env)

    assert line == (
        f"MLflow run {mlflow_run.info.run_id} ended KILLED: its training process died before it could "
        "(killed by signal 9 (SIGKILL))"
    )
    assert client.get_run(mlflow_run.info.run_id).info.status == "KILLED"
