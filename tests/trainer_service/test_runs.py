"""Training processes under the service: a real timm run, concurrency, cancel, kill, failure, listing, shutdown."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.trainer.v1 import trainer_pb2

from .trainer_process import FAKE_ADAPTER, TrainerProcess, mlflow_run_ended, spec, wait_until

RUNNING = trainer_pb2.RUN_STATE_RUNNING
SUCCEEDED = trainer_pb2.RUN_STATE_SUCCEEDED
FAILED = trainer_pb2.RUN_STATE_FAILED
CANCELLED = trainer_pb2.RUN_STATE_CANCELLED
# Long enough that only a cancel or a kill ends it.
ENDLESS = {"fake_batches": 5, "fake_batch_s": 0.05}
ENDLESS_EPOCHS = 10_000  # TP_MAX_EPOCHS by default; 0.25 s each: about 40 minutes


def _backend_status(backend: BackendProcess, job_id: str, status: str) -> None:
    wait_until(lambda: backend.job_status(job_id) == status, 60, f"backend job {job_id} to be {status}")


def test_real_timm_run_succeeds_and_completes_the_job(timm_trainer: TrainerProcess, backend: BackendProcess) -> None:
    job_id, token = backend.create_job(framework="timm", model="resnet10t", epochs=1)
    run_id = timm_trainer.start_training(job_id, spec(epochs=1, image_size=32), backend.address, token)

    run = timm_trainer.wait_state(run_id, SUCCEEDED, timeout=600)
    assert run.job_id == job_id
    assert run.exit_code == 0
    assert run.pid == 0
    assert run.total_epochs == 1
    assert run.HasField("end_time") and run.end_time.ToNanoseconds() >= run.start_time.ToNanoseconds()
    assert Path(run.output_dir, "weights", "last.pt").is_file()
    assert "Training completed" in timm_trainer.train_log(run)
    _backend_status(backend, job_id, "COMPLETED")
    assert backend.status_events(job_id)[-2:] == ["RUNNING", "COMPLETED"]
    assert backend.metric_sequences(job_id)
    assert timm_trainer.get(job_id=job_id).run_id == run_id


def test_cancelling_a_real_timm_run_with_loader_workers_stops_it_cleanly(
    timm_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    # The group's SIGTERM killed the DataLoader workers too: the training process died of "DataLoader worker (pid
    # ...) is killed by signal: Terminated", exit 1, with no last checkpoint and results recorded. (Ultralytics
    # loads with workers on a GPU only; tests/trainers/test_ultralytics_adapter.py covers its loader.)
    job_id, token = backend.create_job(framework="timm", model="resnet10t", epochs=50)
    job_spec = spec(epochs=50, image_size=32)
    job_spec.training.num_workers = 2
    run_id = timm_trainer.start_training(job_id, job_spec, backend.address, token)
    wait_until(lambda: timm_trainer.get(run_id).current_epoch >= 1, 300, "the first epoch to end")

    timm_trainer.cancel(run_id)
    run = timm_trainer.wait_state(run_id, CANCELLED, timeout=120)
    log = timm_trainer.train_log(run)
    assert run.exit_code == 128 + signal.SIGTERM, log[-3000:]
    assert "DataLoader worker" not in log and "Training cancelled after" in log
    results = json.loads(Path(run.output_dir, "results.json").read_text())
    assert results["status"] == "cancelled"
    assert Path(run.output_dir, "weights", "last.pt").is_file()
    _backend_status(backend, job_id, "CANCELLED")


def test_progress_is_reported_while_running(fake_trainer: TrainerProcess) -> None:
    run_id = fake_trainer.start_training(f"job-{uuid.uuid4().hex}", spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
    running = fake_trainer.wait_state(run_id, RUNNING)
    assert running.pid > 0
    assert running.total_epochs == ENDLESS_EPOCHS
    run = wait_until(
        lambda: (r := fake_trainer.get(run_id)).current_epoch >= 1 and "val/accuracy" in r.latest_metrics and r,
        what="progress of epoch 1",
    )
    assert "train/batch_loss" in run.latest_metrics
    assert not run.HasField("end_time")


def test_concurrency_limit_and_idempotent_start(fake_trainer: TrainerProcess) -> None:
    jobs = [f"job-{uuid.uuid4().hex}" for _ in range(3)]
    first = fake_trainer.start_training(jobs[0], spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
    second = fake_trainer.start_training(jobs[1], spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
    assert first != second

    with pytest.raises(grpc.RpcError) as caught:
        fake_trainer.start_training(jobs[2], spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2 of its 2" in caught.value.details()

    # A retried start of a live job returns its run, even at the limit.
    assert fake_trainer.start_training(jobs[0], spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS)) == first

    fake_trainer.cancel(first, grace=1)
    fake_trainer.wait_state(first, CANCELLED)
    third = fake_trainer.start_training(jobs[2], spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
    assert fake_trainer.get(third).job_id == jobs[2]


def test_a_start_of_a_job_whose_run_is_stopping_or_of_another_attempt_never_gets_that_run(
    fake_trainer: TrainerProcess,
) -> None:
    """A job sent here again after its run here was cancelled (its dispatch attempt superseded) got the dying run
    back: nothing trained and the job later failed "without reporting a final status". And a start carrying
    another telemetry token (another dispatch attempt) got the live run of the old one, whose token is fenced."""
    job_id = f"job-{uuid.uuid4().hex}"
    stubborn = spec(epochs=1, extra={"fake_mode": "stubborn", "fake_batches": 1_000_000, "fake_batch_s": 0.05})
    first = fake_trainer.start_training(job_id, stubborn, telemetry_token="attempt-1")
    pid = fake_trainer.wait_state(first, RUNNING).pid
    fake_trainer.cancel(first, grace=600)  # it ignores SIGTERM: stopping until killed
    try:
        for token in ("attempt-1", "attempt-2"):
            with pytest.raises(grpc.RpcError) as caught:
                fake_trainer.start_training(job_id, stubborn, telemetry_token=token)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"run {first} of job {job_id!r} on this trainer is stopping; retry" in caught.value.details()
    finally:
        os.killpg(pid, signal.SIGKILL)
    fake_trainer.wait_state(first, CANCELLED)
    endless = spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS)
    second = fake_trainer.start_training(job_id, endless, telemetry_token="attempt-2")
    assert second != first
    assert fake_trainer.get(job_id=job_id).run_id == second
    assert fake_trainer.start_training(job_id, endless, telemetry_token="attempt-2") == second  # a retry

    # Another attempt's start stops the live run of the superseded one, and gets a run of its own once it ended.
    with pytest.raises(grpc.RpcError) as caught:
        fake_trainer.start_training(job_id, endless, telemetry_token="attempt-3")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "another dispatch attempt" in caught.value.details()
    assert "attempt-" not in caught.value.details()  # tokens are never shown
    fake_trainer.wait_state(second, CANCELLED)
    third = fake_trainer.start_training(job_id, endless, telemetry_token="attempt-3")
    assert third not in (first, second)
    assert fake_trainer.wait_state(third, RUNNING).job_id == job_id


def test_a_start_this_host_cannot_make_is_unavailable_not_a_refusal_of_the_job(fake_trainer: TrainerProcess) -> None:
    """A local OS error at the process's start (a full disk, too many open files, permissions) answered
    FAILED_PRECONDITION, which the backend takes as "this job cannot run": another replica could run it."""
    job_id = f"job-{uuid.uuid4().hex}"
    blocker = Path(fake_trainer.data_dir, "runs", job_id)
    blocker.write_text("")  # the run directory cannot be made under it (ENOTDIR), as under a full disk (ENOSPC)
    with pytest.raises(grpc.RpcError) as caught:
        fake_trainer.start_training(job_id, spec(epochs=1))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Not a directory (ENOTDIR)" in caught.value.details()
    assert "this trainer's host, not the job" in caught.value.details()

    blocker.unlink()
    run_id = fake_trainer.start_training(job_id, spec(epochs=1))
    fake_trainer.wait_state(run_id, SUCCEEDED)


def test_cancel_stops_the_run_and_the_job_ends_cancelled(fake_trainer: TrainerProcess, backend: BackendProcess) -> None:
    job_id, token = backend.create_job(epochs=ENDLESS_EPOCHS)
    run_id = fake_trainer.start_training(job_id, spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS), backend.address, token)
    fake_trainer.wait_state(run_id, RUNNING)
    _backend_status(backend, job_id, "RUNNING")

    response = fake_trainer.stub.CancelTraining(
        trainer_pb2.CancelTrainingRequest(job_id=job_id), metadata=fake_trainer.metadata, timeout=10
    )
    assert response.run.run_id == run_id

    run = fake_trainer.wait_state(run_id, CANCELLED)
    assert run.exit_code == 128 + signal.SIGTERM  # tp-train stopped gracefully
    assert run.error_message == ""
    assert Path(run.output_dir, "weights", "last.pt").is_file()
    _backend_status(backend, job_id, "CANCELLED")
    assert backend.metric_sequences(job_id)  # telemetry sent before the cancel is kept

    again = fake_trainer.cancel(run_id)
    assert again == run  # cancelling an ended run changes nothing


def test_a_run_ignoring_sigterm_is_killed_after_the_grace_period(
    fake_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    job_id, token = backend.create_job(epochs=1)
    stubborn = {"fake_mode": "stubborn", "fake_batches": 1_000_000, "fake_batch_s": 0.05}
    run_id = fake_trainer.start_training(job_id, spec(epochs=1, extra=stubborn), backend.address, token)
    fake_trainer.wait_state(run_id, RUNNING)

    fake_trainer.cancel(run_id, grace=1)
    run = fake_trainer.wait_state(run_id, CANCELLED)
    assert run.exit_code == -signal.SIGKILL
    # The process could not report; the service did, and it ended the MLflow run the process had left RUNNING.
    _backend_status(backend, job_id, "CANCELLED")
    tags = mlflow_run_ended(fake_trainer, backend, job_id, "KILLED")
    assert tags["end_reason"] == "cancelled by CancelTraining"


def test_a_cancel_while_the_backend_is_down_ends_within_the_grace_and_loses_nothing(
    tmp_path: Path, backend: BackendProcess
) -> None:
    """The cancelled process keeps what it could not deliver in its spool and exits (143) well within the grace
    period. It used to wait 30 s for the unreachable backend, as long as TP_CANCEL_GRACE_S, and be SIGKILLed: a
    stack whose backend died with it (`tp up` killed) kept its trainer and the trainer's port for 40 s."""
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER}).start()
    try:
        job_id, token = backend.create_job(epochs=ENDLESS_EPOCHS)
        run_id = trainer.start_training(job_id, spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS), backend.address, token)
        trainer.wait_state(run_id, RUNNING)
        wait_until(lambda: backend.metric_sequences(job_id), 30, "some points committed")
        backend.stop()

        trainer.cancel(run_id)  # TP_CANCEL_GRACE_S: 30 s
        run = trainer.wait_state(run_id, CANCELLED, timeout=60)
        assert run.exit_code == 128 + signal.SIGTERM, trainer.train_log(run)[-2000:]
        assert "did not stop within" not in trainer.log_text()

        backend.restart()
        _backend_status(backend, job_id, "CANCELLED")
        steps = [row[3] for row in backend.metric_rows(job_id) if row[1] == "train/batch_loss"]
        assert steps == list(range(1, len(steps) + 1))  # every batch loss logged, once, in order
    finally:
        trainer.close()


def test_a_killed_run_fails_naming_the_signal_and_the_service_keeps_serving(
    fake_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    job_id, token = backend.create_job(epochs=ENDLESS_EPOCHS)
    run_id = fake_trainer.start_training(job_id, spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS), backend.address, token)
    pid = fake_trainer.wait_state(run_id, RUNNING).pid

    os.kill(pid, signal.SIGKILL)

    run = fake_trainer.wait_state(run_id, FAILED)
    assert run.exit_code == -signal.SIGKILL
    assert "killed by signal 9 (SIGKILL)" in run.error_message
    assert run.pid == 0
    _backend_status(backend, job_id, "FAILED")
    assert backend.status_events(job_id)[-1] == "FAILED"
    assert "killed by signal 9 (SIGKILL)" in mlflow_run_ended(fake_trainer, backend, job_id, "FAILED")["end_reason"]

    health = health_pb2_grpc.HealthStub(fake_trainer.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    next_job, next_token = backend.create_job(epochs=1)
    next_run = fake_trainer.start_training(next_job, spec(epochs=1), backend.address, next_token)
    fake_trainer.wait_state(next_run, SUCCEEDED)
    _backend_status(backend, next_job, "COMPLETED")


def test_an_exception_in_training_fails_the_run_and_the_job(
    fake_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    job_id, token = backend.create_job(epochs=1)
    run_id = fake_trainer.start_training(job_id, spec(epochs=1, extra={"fake_mode": "fail"}), backend.address, token)

    run = fake_trainer.wait_state(run_id, FAILED)
    assert run.exit_code == 1
    assert "exited with code 1" in run.error_message
    assert "fake failure in training" in fake_trainer.train_log(run)
    _backend_status(backend, job_id, "FAILED")
    assert "end_reason" not in mlflow_run_ended(fake_trainer, backend, job_id, "FAILED")  # the process ended it


def test_list_trainings_pages_newest_first(fake_trainer: TrainerProcess) -> None:
    run_ids = []
    for _ in range(3):
        run_id = fake_trainer.start_training(f"job-{uuid.uuid4().hex}", spec(epochs=1, extra={"fake_batches": 1}))
        fake_trainer.wait_state(run_id, SUCCEEDED)
        run_ids.append(run_id)

    seen: list[str] = []
    token = ""
    while True:
        page = fake_trainer.stub.ListTrainings(
            trainer_pb2.ListTrainingsRequest(page_size=2, page_token=token), metadata=fake_trainer.metadata, timeout=10
        )
        assert len(page.runs) <= 2
        seen.extend(run.run_id for run in page.runs)
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert [run_id for run_id in seen if run_id in run_ids] == list(reversed(run_ids))


def test_the_trainer_forgets_all_but_its_newest_ended_runs_and_pages_what_it_keeps(tmp_path: Path) -> None:
    """Every run ever started stayed in memory, and the backend's lease walked them all every 10 s (50,000 runs:
    0.4 s of the trainer's event loop per round, each page a walk of the whole list). Live runs and runs whose end
    is not reported yet are always kept; of the reported ones, the TP_KEEP_ENDED_RUNS that ended last, also after a
    restart."""
    env = {"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_KEEP_ENDED_RUNS": "2", "TP_MAX_CONCURRENT_JOBS": "2"}
    trainer = TrainerProcess(tmp_path / "trainer", env=env).start()
    try:
        live = trainer.start_training(f"job-{uuid.uuid4().hex}", spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS))
        ended = []
        for _ in range(3):
            run_id = trainer.start_training(f"job-{uuid.uuid4().hex}", spec(epochs=1, extra={"fake_batches": 1}))
            trainer.wait_state(run_id, SUCCEEDED)
            ended.append(run_id)

        def listed(page_size: int) -> list[str]:
            seen, token = [], ""
            while True:
                request = trainer_pb2.ListTrainingsRequest(page_size=page_size, page_token=token)
                page = trainer.stub.ListTrainings(request, metadata=trainer.metadata, timeout=10)
                assert len(page.runs) <= page_size
                seen += [run.run_id for run in page.runs]
                if not (token := page.next_page_token):
                    return seen

        kept = [ended[2], ended[1], live]  # newest first; the live run is the oldest
        wait_until(lambda: listed(100) == kept, 30, "the oldest ended run to be forgotten")
        assert listed(1) == listed(2) == kept
        with pytest.raises(grpc.RpcError) as caught:
            trainer.get(ended[0])
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert list(Path(tmp_path, "trainer", "runs").glob(f"*/{ended[0]}/run.json"))  # its directory stays

        trainer.stop()  # the live run ends CANCELLED, last: ended[1] goes
        trainer.start()  # reads every run.json, keeps the same
        assert listed(1) == [ended[2], live]
        assert trainer.get(live).state == CANCELLED
    finally:
        trainer.close()


def test_shutdown_stops_running_jobs(tmp_path: Path, backend: BackendProcess) -> None:
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER}).start()
    try:
        job_id, token = backend.create_job(epochs=ENDLESS_EPOCHS)
        run_id = trainer.start_training(job_id, spec(epochs=ENDLESS_EPOCHS, extra=ENDLESS), backend.address, token)
        trainer.wait_state(run_id, RUNNING)

        assert trainer.stop() == 0
        _backend_status(backend, job_id, "CANCELLED")
        assert "stopping run" in trainer.log_text()
        # The job's history says why: it read "stop requested (SIGTERM)", as if someone had cancelled it.
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        events = backend.jobs().GetJob(request, metadata=auth(backend.internal_token), timeout=10).status_events
        assert events[-1].reason == "stop requested: the trainer service shut down"
    finally:
        trainer.close()


def test_a_run_that_ended_during_a_backend_outage_is_delivered_from_its_spool(
    fake_trainer: TrainerProcess, backend: BackendProcess
) -> None:
    """The backend is down for the whole run: the process spools everything and exits; once the backend is back,
    the service replays the spool, and only then reports the final status, after every metric."""
    job_id, token = backend.create_job()
    backend.stop()
    run_id = fake_trainer.start_training(
        job_id, spec(epochs=2, extra={"fake_batches": 20, "fake_batch_s": 0.01}), backend.address, token
    )
    fake_trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, timeout=180)
    spool = Path(fake_trainer.get(run_id).output_dir) / "spool"
    assert any(spool.glob("*")), "the process left its telemetry in the spool"
    backend.restart()
    wait_until(lambda: backend.job_status(job_id) == "COMPLETED", timeout=120, what="the job to complete")
    steps = [row[3] for row in backend.metric_rows(job_id) if row[1] == "train/batch_loss"]
    assert steps == list(range(1, 41))  # every batch loss, once, in order
    assert backend.status_events(job_id) == ["PENDING", "RUNNING", "COMPLETED"]
    assert backend.cursor_row(job_id)["duplicate_count"] == 0


def test_a_shutdown_while_the_backend_is_down_keeps_an_undelivered_end_for_the_next_start(
    tmp_path: Path, backend: BackendProcess
) -> None:
    """A service stopped while an ended run's spool cannot reach the backend stops within its report budget (it
    used to wait 60 s for the reports, then 60 s more for the replay thread) and leaves the run unreported; the
    next start on the same data directory delivers the spool, then the final status, nothing lost or doubled."""
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER}).start()
    try:
        job_id, token = backend.create_job()
        backend.stop()
        run_id = trainer.start_training(
            job_id, spec(epochs=2, extra={"fake_batches": 20, "fake_batch_s": 0.01}), backend.address, token
        )
        trainer.wait_state(run_id, trainer_pb2.RUN_STATE_SUCCEEDED, timeout=180)
        wait_until(lambda: "replaying" in trainer.log_text(), timeout=60, what="the service to replay the spool")
        started = time.monotonic()
        assert trainer.stop() == 0
        took = time.monotonic() - started
        assert took < 40, f"the shutdown took {took:.0f} s"  # 10 s for the reports, then the open calls' 5 s
        assert "is kept for the next start of this service" in trainer.log_text()
        backend.restart()
        trainer.start()
        wait_until(lambda: backend.job_status(job_id) == "COMPLETED", timeout=120, what="the job to complete")
        steps = [row[3] for row in backend.metric_rows(job_id) if row[1] == "train/batch_loss"]
        assert steps == list(range(1, 41))
        assert backend.cursor_row(job_id)["duplicate_count"] == 0
    finally:
        trainer.close()


def _slow_image_folder(root: Path, classes: int = 1000, directories: int = 2000) -> Path:
    """An ImageFolder data set whose submit check walks for a minute or more on this machine: every class folder
    of train/ and val/ is a symbolic link to one shared folder of `directories` empty directories and one image
    (legal: no link loop within a class folder), so the check walks it once per class."""
    from PIL import Image

    shared = root / "shared"
    for i in range(directories):
        (shared / f"d{i}").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(shared / "0.png")
    for split in ("train", "val"):
        (root / split).mkdir()
        for i in range(classes):
            os.symlink(shared, root / split / f"class{i}")
    return root


@pytest.mark.parametrize("validate_only", [True, False], ids=["validate-only", "start"])
def test_sigterm_during_a_long_submit_check_stops_the_service_within_its_grace(
    tmp_path: Path, validate_only: bool
) -> None:
    """SIGTERM while StartTraining checked a large data set waited for the check to end (minutes) before the
    shutdown began: the start held the lock the shutdown takes, and the check's worker thread kept the process from
    exiting. The shutdown now begins at once, the call is answered UNAVAILABLE (or cancelled) and the process exits
    within TP_SHUTDOWN_GRACE_S."""
    dataset = _slow_image_folder(tmp_path / "big")
    trainer = TrainerProcess(tmp_path / "trainer", env={"TP_SHUTDOWN_GRACE_S": "2"}).start()
    try:
        request = trainer_pb2.StartTrainingRequest(
            job_id="slow-check", spec=spec(dataset="", path=str(dataset)), validate_only=validate_only
        )
        call = trainer.stub.StartTraining.future(request, metadata=trainer.metadata, timeout=300)
        time.sleep(3)  # the check is walking
        assert not call.done()
        assert trainer.process is not None
        trainer.process.send_signal(signal.SIGTERM)
        # The check alone walks for a minute or more; the grace is 2 s, the rest the interpreter's own teardown
        # (torch is imported), a few seconds on a loaded machine.
        assert trainer.process.wait(timeout=20) == 0
        with pytest.raises(grpc.RpcError) as caught:
            call.result(timeout=10)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), caught.value
    finally:
        trainer.close()
