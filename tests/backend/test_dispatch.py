"""Dispatch to trainer services: what happens when no trainer can take the job."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth, free_port
from support.fake_trainer import FakeTrainer
from support.tp import TP, shell_env
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.dispatch import FRAMEWORKS_TTL_S
from trainingplatform_sdk.clients import JobsClient

SPEC = common_pb2.JobSpec(
    framework="timm",
    model=common_pb2.ModelConfig(name="resnet10t"),
    dataset=common_pb2.DatasetConfig(name="digits"),
    training=common_pb2.TrainingConfig(epochs=1),
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unreachable_trainers_fail_the_job_with_every_reason(database_url: str, tmp_path: Path):
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    trainers = ",".join(f"timm={a}" for a in dead)
    backend = BackendProcess(
        database_url, tmp_path / "data", extra_env={"TP_TRAINERS": trainers, "TP_DISPATCH_TIMEOUT_S": "3"}
    )
    backend.start()
    try:
        created = backend.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=SPEC), metadata=auth(backend.internal_token), timeout=60
        )
        # Every replica down: the job waits QUEUED while the backend retries, then fails with the reasons.
        assert created.job.status == common_pb2.JOB_STATUS_QUEUED
        job_id = created.job.job_id
        deadline = time.monotonic() + 60
        while backend.job_status(job_id) == "QUEUED" and time.monotonic() < deadline:
            time.sleep(0.2)
        job = backend.jobs().GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=auth(backend.internal_token)).job
        assert job.status == common_pb2.JOB_STATUS_FAILED
        assert "no timm trainer accepted the job within 3 s" in job.error_message
        for address in dead:  # both replicas were tried, and each reason is named
            assert address in job.error_message
        assert "UNAVAILABLE" in job.error_message
        assert backend.status_events(job.job_id) == ["PENDING", "QUEUED", "FAILED"]
        # ListFrameworks offers timm, configured, and says that none of its trainers answers now, naming each.
        listed = backend.jobs().ListFrameworks(jobs_pb2.ListFrameworksRequest(), metadata=auth(backend.read_token))
        [timm] = listed.frameworks
        assert (timm.name, timm.trainers, timm.reachable_trainers) == ("timm", 2, 0)
        assert timm.unreachable_reason.startswith("no timm trainer answered: ")
        for address in dead:
            assert f"{address}: UNAVAILABLE" in timm.unreachable_reason
        with JobsClient(backend.address, backend.read_token) as client:  # the same through the Python client
            [listed_timm] = client.list_frameworks()
        assert (listed_timm.name, listed_timm.trainers, listed_timm.reachable_trainers) == ("timm", 2, 0)
        assert all(f"{address}: UNAVAILABLE" in listed_timm.unreachable_reason for address in dead)
        # A framework with no trainer at all is refused before anything is stored.
        other = common_pb2.JobSpec()
        other.CopyFrom(SPEC)
        other.framework = "ultralytics"
        with pytest.raises(grpc.RpcError) as refused:
            backend.jobs().CreateJob(jobs_pb2.CreateJobRequest(spec=other), metadata=auth(backend.internal_token))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        backend.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_frameworks_asks_the_trainers_at_most_once_a_ttl_and_sees_a_new_trainer_after_it(
    database_url: str, tmp_path: Path
):
    """ListFrameworks asked every trainer on each call: a flood of calls (the read token may make them) became as
    many GetCapabilities calls on the trainers. The answer is kept FRAMEWORKS_TTL_S; concurrent callers share one
    refresh."""
    trainer = FakeTrainer()  # not started yet: nothing answers at its address
    backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_TRAINERS": f"timm={trainer.address}"})
    backend.start()
    try:
        jobs, read = backend.jobs(), auth(backend.read_token)

        def reachable(_: object = None) -> int:
            [timm] = jobs.ListFrameworks(jobs_pb2.ListFrameworksRequest(), metadata=read, timeout=10).frameworks
            return timm.reachable_trainers

        def flood() -> tuple[list[int], int, float]:
            """40 quick calls, 8 at a time: their answers, the trainer calls they cost and how long they took."""
            before, started = trainer.calls.get("GetCapabilities", 0), time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(reachable, range(40)))
            return answers, trainer.calls.get("GetCapabilities", 0) - before, time.monotonic() - started

        first = time.monotonic()
        assert reachable() == 0
        trainer.start()
        answers, asked, _ = flood()
        since = time.monotonic() - first
        assert asked <= int(since / FRAMEWORKS_TTL_S), (asked, since)  # 40 before the answer was kept
        if since < FRAMEWORKS_TTL_S:
            assert set(answers) == {0}  # the kept answer: the trainer is not asked yet
        # The trainer that started shows once the kept answer is older than the TTL.
        wait_until(lambda: reachable() == 1, FRAMEWORKS_TTL_S + 10, "the started trainer to be listed")
        answers, asked, took = flood()
        assert set(answers) == {1}
        assert asked <= 1 + int(took / FRAMEWORKS_TTL_S), (asked, took)
    finally:
        backend.close()
        trainer.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_queued_jobs_start_in_the_order_they_were_created_and_say_why_they_wait(database_url: str, tmp_path: Path):
    # Each job retried on its own backoff (1 s doubling to 10 s): the job that had waited longest was asked least
    # often, so newer jobs took the freed slot before it, and it was the one to time out under load.
    with FakeTrainer(capacity=1) as trainer:
        backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_TRAINERS": f"timm={trainer.address}"})
        backend.start()
        try:
            jobs = backend.jobs()

            def create() -> str:
                request = jobs_pb2.CreateJobRequest(spec=SPEC)
                return jobs.CreateJob(request, metadata=auth(backend.internal_token), timeout=60).job.job_id

            def wait(condition, what: str) -> None:
                deadline = time.monotonic() + 60
                while not condition():
                    assert time.monotonic() < deadline, what
                    time.sleep(0.05)

            first = create()
            wait(lambda: trainer.training(first), "the first job to start")
            oldest = create()
            # The oldest waiting job has been refused (the slot is taken) several times: its backoff is long.
            wait(lambda: trainer.calls.get("StartTraining", 0) >= 5, "the oldest waiting job to be retried")
            # Why it waits is the job's, not only the backend log's (`tp show` prints it).
            get = jobs_pb2.GetJobRequest(job_id=oldest)
            waiting = jobs.GetJob(get, metadata=auth(backend.internal_token)).job.waiting_reason
            assert waiting == f"{trainer.address}: RESOURCE_EXHAUSTED this trainer already runs 1 of 1"
            env = shell_env(TP_AUTH_TOKEN=backend.internal_token, TP_CONFIG=str(tmp_path / "none.json"))
            shown = subprocess.run(
                [TP, "--backend", backend.address, "show", oldest],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert f"  waiting for a trainer: {waiting}" in shown.stdout.splitlines(), shown.stdout + shown.stderr
            newer = [create() for _ in range(3)]
            order = [first]
            for _ in range(4):
                trainer.finish(order[-1])
                wait(lambda: any(trainer.training(job) for job in [oldest, *newer]), "the next job to start")
                order.append(next(job for job in [oldest, *newer] if trainer.training(job)))
            assert order == [first, oldest, *newer]
            assert jobs.GetJob(get, metadata=auth(backend.internal_token)).job.waiting_reason == ""  # it runs
        finally:
            backend.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_job_ending_hands_its_slot_to_the_oldest_queued_job_without_waiting_out_the_backoff(
    database_url: str, tmp_path: Path
):
    # The framework's backoff (1 s doubling to 10 s) left a freed slot idle until its next try: up to 10 s.
    with FakeTrainer(capacity=1) as trainer:
        backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_TRAINERS": f"timm={trainer.address}"})
        backend.start()
        try:
            jobs = backend.jobs()
            first = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=auth(backend.internal_token)).job
            wait_until(lambda: trainer.training(first.job_id), 60, "the first job to start")
            second = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=auth(backend.internal_token)).job
            # Refused 5 times (the slot is taken): the backoff is now at its longest. Right after a refusal, the
            # first job ends, as a trainer reports it.
            wait_until(lambda: trainer.calls.get("StartTraining", 0) >= 6, 60, "the second job refused 5 times")
            refused = trainer.calls["StartTraining"]
            wait_until(lambda: trainer.calls["StartTraining"] > refused, 30, "one more refusal")
            trainer.finish(first.job_id)
            ended = time.monotonic()
            for status in (common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_COMPLETED):
                backend.telemetry().UpdateStatus(
                    telemetry_pb2.UpdateStatusRequest(job_id=first.job_id, status=status),
                    metadata=auth(backend.internal_token),
                    timeout=10,
                )
            wait_until(lambda: trainer.training(second.job_id), 30, "the second job to start")
            assert time.monotonic() - ended < 5, "the freed slot waited out the backoff (10 s)"
        finally:
            backend.close()


class _HungCancel(FakeTrainer):
    """A trainer whose first CancelTraining hangs until the test lets it go, then fails without cancelling (its
    loop was stuck); later ones work."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self._hung = False

    def CancelTraining(self, request, context):  # type: ignore[no-untyped-def]
        with self._lock:
            first, self._hung = not self._hung, True
        if first:
            self._count("CancelTraining")
            self.release.wait(60)
            context.abort(grpc.StatusCode.UNAVAILABLE, "the fake trainer's loop is stuck")
        return super().CancelTraining(request, context)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancel_job_answers_without_waiting_for_a_hung_trainer_and_the_sweep_retries(database_url: str, tmp_path: Path):
    # CancelJob awaited CancelTraining (up to TP_TRAINER_CALL_TIMEOUT_S, 30 s): the caller got DEADLINE_EXCEEDED
    # although the job was cancelled.
    with _HungCancel() as trainer:
        env = {"TP_TRAINERS": f"timm={trainer.address}", "TP_TRAINER_LEASE_S": "1", "TP_WATCH_INTERVAL_S": "0.5"}
        backend = BackendProcess(database_url, tmp_path / "data", extra_env=env)
        backend.start()
        try:
            jobs, metadata = backend.jobs(), auth(backend.internal_token)
            job_id = jobs.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=60).job.job_id
            get = jobs_pb2.GetJobRequest(job_id=job_id)
            wait_until(lambda: jobs.GetJob(get, metadata=metadata).job.trainer_address, 60, "the dispatch", 0.05)
            cancelled = jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=5).job
            assert cancelled.status == common_pb2.JOB_STATUS_CANCELLED
            assert trainer.training(job_id)  # the trainer's cancel hangs, then fails
            trainer.release.set()
            # The lease's sweep finds the run still live on the trainer and cancels it again.
            wait_until(lambda: not trainer.training(job_id), 60, "the sweep to cancel the run", 0.05)
            assert trainer.calls["CancelTraining"] >= 2
            assert backend.job_status(job_id) == "CANCELLED"
        finally:
            trainer.release.set()
            backend.close()
