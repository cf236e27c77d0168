"""A trainer service killed with SIGKILL mid-run, and a new one started on the same runs directory.

The training process outlives the service (it runs in its own session). The new service reads the run from its
`run.json`, adopts the process (GetTraining and ListTrainings know it), watches it until it exits, and reports
the job's final status to the backend after every metric of the run.
"""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess, mlflow_run_ended, spec, wait_until
from trainingplatform.trainer.v1 import trainer_pb2

EPOCHS = 5
BATCHES = 20
_ENV = {"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_MLFLOW_ENABLED": "false", "TP_CANCEL_GRACE_S": "5"}


def _kill(trainer: TrainerProcess) -> None:
    assert trainer.process is not None
    trainer.process.send_signal(signal.SIGKILL)
    assert trainer.process.wait(30) == -signal.SIGKILL


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the trainer, not the database, is under test
def test_a_trainer_service_restart_mid_run(backend: BackendProcess, tmp_path: Path) -> None:
    data_dir = tmp_path / "trainer"
    first = TrainerProcess(data_dir, env=_ENV).start()
    second: TrainerProcess | None = None
    try:
        job_id, token = backend.create_job(epochs=EPOCHS)
        job_spec = spec(epochs=EPOCHS, extra={"fake_batches": BATCHES, "fake_batch_s": 0.1})
        run_id = first.start_training(job_id, job_spec, backend.address, token)
        pid = first.wait_state(run_id, trainer_pb2.RUN_STATE_RUNNING).pid
        wait_until(lambda: backend.job_status(job_id) == "RUNNING", 60, "the job RUNNING")
        run_file = Path(first.get(run_id).output_dir) / "run.json"
        _kill(first)

        assert os.kill(pid, 0) is None, "the training process outlives its service"
        assert stat.S_IMODE(run_file.stat().st_mode) == 0o600  # it holds the job's telemetry token
        second = TrainerProcess(data_dir, env=_ENV).start()
        adopted = second.get(run_id)
        assert adopted.job_id == job_id
        assert adopted.state == trainer_pb2.RUN_STATE_RUNNING and adopted.pid == pid
        assert second.get(job_id=job_id).run_id == run_id
        assert [run.run_id for run in second.list_all()] == [run_id]
        # A retried start of the job returns the adopted run rather than a second process.
        assert second.start_training(job_id, job_spec, backend.address, token) == run_id

        ended = second.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, timeout=120)
        assert ended.pid == 0 and ended.exit_code == 0
        wait_until(lambda: backend.job_status(job_id) == "COMPLETED", 60, "the job COMPLETED")
        steps = [row[3] for row in backend.metric_rows(job_id) if row[1] == "train/batch_loss"]
        assert steps == list(range(1, EPOCHS * BATCHES + 1))
        assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
        assert "adopted run" in second.log_text()
    finally:
        first.close()
        if second is not None:
            second.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_run_that_died_while_its_service_was_down_is_reported_by_the_next_one(
    backend: BackendProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "trainer"
    tracked = {**_ENV, "TP_MLFLOW_ENABLED": "true"}  # the local MLflow store of the data directory
    first = TrainerProcess(data_dir, env=tracked).start()
    second: TrainerProcess | None = None
    try:
        job_id, token = backend.create_job(epochs=1000)
        job_spec = spec(epochs=1000, extra={"fake_batches": 5, "fake_batch_s": 0.05})
        run_id = first.start_training(job_id, job_spec, backend.address, token)
        pid = first.wait_state(run_id, trainer_pb2.RUN_STATE_RUNNING).pid
        wait_until(lambda: backend.job_status(job_id) == "RUNNING", 60, "the job RUNNING")
        # Points reach the backend within the flush interval (a second while nobody watches): some have, and the
        # killed process's last unsent ones die with it.
        wait_until(lambda: backend.metric_sequences(job_id), 30, "some points committed")
        _kill(first)
        os.killpg(pid, signal.SIGKILL)  # the process dies too, while no service watches it: nobody reports it
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30, "the process gone")

        second = TrainerProcess(data_dir, env=tracked).start()
        run = second.wait_state(run_id, trainer_pb2.RUN_STATE_FAILED, timeout=60)
        assert run.pid == 0 and "while the trainer service" in run.error_message
        wait_until(lambda: backend.job_status(job_id) == "FAILED", 60, "the job FAILED")
        assert backend.status_events(job_id) == ["PENDING", "RUNNING", "FAILED"]
        assert backend.metric_sequences(job_id)  # what it sent before is kept
        # The MLflow run the process left RUNNING is ended by the next service.
        assert "while the trainer service" in mlflow_run_ended(second, backend, job_id, "FAILED")["end_reason"]
    finally:
        first.close()
        if second is not None:
            second.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_two_services_of_a_framework_never_share_a_runs_directory(backend: BackendProcess, tmp_path: Path) -> None:
    # A second service on the same data directory (a second `tp up`) adopted the first one's live runs, and
    # cancelled them when it stopped; the ultralytics service of a stack adopted the timm service's runs too.
    data_dir = tmp_path / "trainer"
    first = TrainerProcess(data_dir, env=_ENV).start()
    try:
        job_id, token = backend.create_job(epochs=1000)
        job_spec = spec(epochs=1000, extra={"fake_batches": 5, "fake_batch_s": 0.05})
        run_id = first.start_training(job_id, job_spec, backend.address, token)
        first.wait_state(run_id, trainer_pb2.RUN_STATE_RUNNING)

        second = TrainerProcess(data_dir, env=_ENV)
        with pytest.raises(RuntimeError, match="trainer exited with 1"):
            second.start()
        assert f"another tp-trainer-timm (pid {first.process.pid}) serves the runs in" in second.log_text()

        other = TrainerProcess(data_dir, env=_ENV, executable="tp-trainer-ultralytics").start()
        try:
            assert other.list_all() == []
        finally:
            other.close()  # a graceful stop: it stops its own runs, and has none
        assert first.get(run_id).state == trainer_pb2.RUN_STATE_RUNNING
        assert "adopted run" not in other.log_text() and "stopping run" not in other.log_text()
    finally:
        first.close()
