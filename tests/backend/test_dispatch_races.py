"""Dispatch against trainers that are slow, late or restarted: cancels during dispatch, retried CreateJobs, short
client deadlines, backend restarts, and the lease around runs whose spool is still being replayed.

The trainer is `support.fake_trainer.FakeTrainer`: a TrainerService in the test process whose StartTraining
takes as long as the test wants and whose runs "train" until cancelled.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from reliability.polling import wait_until
from sqlalchemy import create_engine, text
from support.backend import BackendProcess, auth, free_port
from support.fake_trainer import FakeTrainer
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.clients import JobsClient

SPEC = common_pb2.JobSpec(
    framework="timm",
    model=common_pb2.ModelConfig(name="resnet10t"),
    dataset=common_pb2.DatasetConfig(name="digits"),
    training=common_pb2.TrainingConfig(epochs=1),
)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'backend.db'}"


def start_backend(database_url: str, tmp_path: Path, trainer_address: str, **env: str) -> BackendProcess:
    backend = BackendProcess(
        database_url,
        tmp_path / "data",
        extra_env={"TP_TRAINERS": f"timm={trainer_address}", "TP_DISPATCH_TIMEOUT_S": "120", **env},
    )
    backend.start()
    return backend


@pytest.fixture
def slow_trainer() -> Iterator[FakeTrainer]:
    with FakeTrainer(accept_delay_s=0.15, reply_delay_s=0.15) as trainer:
        yield trainer


# --- 13: a cancel during dispatch ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_cancel_during_dispatch_cancels_the_run_the_trainer_accepted(
    database_url: str, tmp_path: Path, slow_trainer: FakeTrainer
):
    """StartTraining takes 300 ms (150 ms each way). The job is cancelled 0-300 ms after it appears: whatever
    the moment, the job ends CANCELLED and no run of it keeps training."""
    backend = start_backend(database_url, tmp_path, slow_trainer.address)
    try:
        stub, metadata = backend.jobs(), auth(backend.internal_token)
        seen: set[str] = set()
        for delay_ms in range(0, 301, 25):  # 13 timings
            creating = threading.Thread(
                target=stub.CreateJob,
                args=(jobs_pb2.CreateJobRequest(spec=SPEC),),
                kwargs={"metadata": metadata, "timeout": 30},
            )
            creating.start()

            def new_job() -> str | None:
                jobs = stub.ListJobs(jobs_pb2.ListJobsRequest(page_size=5), metadata=metadata, timeout=10).jobs
                fresh = [job.job_id for job in jobs if job.job_id not in seen]
                return fresh[0] if fresh else None

            job_id = str(wait_until(new_job, 10, "the new job"))
            seen.add(job_id)
            time.sleep(delay_ms / 1000)
            stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job_id, reason="test"), metadata=metadata, timeout=30)
            creating.join(30)
            # Give a late StartTraining every chance to land, then check: CANCELLED, and nothing trains.
            wait_until(
                lambda job_id=job_id: not slow_trainer.training(job_id),
                10,
                f"the run of {job_id} to be cancelled ({delay_ms} ms)",
            )
            time.sleep(0.5)
            assert backend.job_status(job_id) == "CANCELLED", delay_ms
            assert not slow_trainer.training(job_id), f"a run keeps training after a cancel at {delay_ms} ms"
            assert "RUNNING" not in backend.status_events(job_id)
        assert slow_trainer.calls.get("StartTraining", 0) >= 1
    finally:
        backend.close()


# --- 16: a CreateJob retry -----------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_create_job_retry_returns_one_job(database_url: str, tmp_path: Path):
    with FakeTrainer() as trainer:
        backend = start_backend(database_url, tmp_path, trainer.address)
        try:
            stub, metadata = backend.jobs(), auth(backend.internal_token)
            key = str(uuid.uuid4())
            request = jobs_pb2.CreateJobRequest(spec=SPEC, display_name="retried", request_id=key)
            first = stub.CreateJob(request, metadata=metadata, timeout=30)
            again = stub.CreateJob(request, metadata=metadata, timeout=30)
            assert again.job.job_id == first.job.job_id
            assert again.telemetry_token == first.telemetry_token  # the same internal caller gets it again
            listed = stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=10).jobs
            assert [job.job_id for job in listed] == [first.job.job_id]
            # The token works: it is the job's.
            backend.telemetry().GetStreamCursor(
                telemetry_pb2.GetStreamCursorRequest(job_id=first.job.job_id),
                metadata=auth(again.telemetry_token),
                timeout=10,
            )
            # Another spec under a used key is refused; a new key makes a new job.
            other = jobs_pb2.CreateJobRequest(spec=SPEC, display_name="something else", request_id=key)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreateJob(other, metadata=metadata, timeout=30)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert key in refused.value.details()
            second = stub.CreateJob(
                jobs_pb2.CreateJobRequest(spec=SPEC, request_id=str(uuid.uuid4())), metadata=metadata, timeout=30
            )
            assert second.job.job_id != first.job.job_id
            wait_until(lambda: len(trainer.runs) == 2, 30, "both jobs dispatched")
            assert sorted(run.job_id for run in trainer.runs) == sorted([first.job.job_id, second.job.job_id])
        finally:
            backend.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_create_job_retry_is_answered_without_asking_the_trainer(database_url: str, tmp_path: Path):
    """A stored request_id is looked up before the trainer's validate_only check: a retry returns its job at once,
    even while the trainer is slow or hung; 16 concurrent calls with one new key still make one job."""
    with FakeTrainer() as trainer:
        backend = start_backend(database_url, tmp_path, trainer.address)
        try:
            stub, metadata = backend.jobs(), auth(backend.internal_token)
            request = jobs_pb2.CreateJobRequest(spec=SPEC, request_id=str(uuid.uuid4()))
            first = stub.CreateJob(request, metadata=metadata, timeout=30)
            assert trainer.calls.get("ValidateTraining") == 1
            again = stub.CreateJob(request, metadata=metadata, timeout=30)
            assert (again.job.job_id, again.telemetry_token) == (first.job.job_id, first.telemetry_token)
            assert trainer.calls.get("ValidateTraining") == 1, "the retry asked the trainer to validate again"

            concurrent = jobs_pb2.CreateJobRequest(spec=SPEC, display_name="raced", request_id=str(uuid.uuid4()))
            results: list[str] = []
            errors: list[grpc.RpcError] = []

            def create() -> None:
                try:
                    results.append(stub.CreateJob(concurrent, metadata=metadata, timeout=60).job.job_id)
                except grpc.RpcError as error:
                    errors.append(error)

            threads = [threading.Thread(target=create) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            assert not errors, errors
            assert len(results) == 16 and len(set(results)) == 1, results
            listed = stub.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata, timeout=10).jobs
            assert sorted(job.job_id for job in listed) == sorted([first.job.job_id, results[0]])
        finally:
            backend.close()


def test_a_used_request_id_is_answered_before_the_trainer_checks(sqlite_url: str, tmp_path: Path):
    """A key used by a dispatch=false job, on a backend with no trainer: the identical retry returns the job, and
    the key reused with dispatch unset (another request) is ALREADY_EXISTS, not "no trainer" (FAILED_PRECONDITION)."""
    backend = BackendProcess(sqlite_url, tmp_path / "data")
    backend.start()
    try:
        stub, metadata = backend.jobs(), auth(backend.internal_token)
        key = str(uuid.uuid4())
        request = jobs_pb2.CreateJobRequest(spec=SPEC, dispatch=False, request_id=key)
        first = stub.CreateJob(request, metadata=metadata, timeout=30)
        assert stub.CreateJob(request, metadata=metadata, timeout=30).job.job_id == first.job.job_id
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC, request_id=key), metadata=metadata, timeout=30)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()
        assert key in refused.value.details()
        # Without a stored key the trainer check still applies.
        with pytest.raises(grpc.RpcError) as no_trainer:
            stub.CreateJob(
                jobs_pb2.CreateJobRequest(spec=SPEC, request_id=str(uuid.uuid4())), metadata=metadata, timeout=30
            )
        assert no_trainer.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        backend.close()


def test_a_retry_that_stores_the_same_job_is_the_same_request(sqlite_url: str, tmp_path: Path):
    """request_id compares what the job stores, not the request's bytes: an empty sub-message present or not is the
    same request; another value is not. A key stored by an earlier version (the hash of the request's own bytes)
    still matches its exact retry."""
    backend = BackendProcess(sqlite_url, tmp_path / "data")
    backend.start()
    try:
        stub, metadata = backend.jobs(), auth(backend.internal_token)

        def create(spec: common_pb2.JobSpec, key: str, **fields: Any) -> jobs_pb2.CreateJobResponse:
            request = jobs_pb2.CreateJobRequest(spec=spec, dispatch=False, request_id=key, **fields)
            return stub.CreateJob(request, metadata=metadata, timeout=30)

        with_empty = common_pb2.JobSpec()
        with_empty.CopyFrom(SPEC)
        with_empty.advanced.SetInParent()
        assert not SPEC.HasField("advanced")
        for first, retry in ((SPEC, with_empty), (with_empty, SPEC)):
            key = str(uuid.uuid4())
            job_id = create(first, key).job.job_id
            assert create(retry, key).job.job_id == job_id
            changed = common_pb2.JobSpec()
            changed.CopyFrom(retry)
            changed.training.epochs += 1
            for other_spec, display_name in ((changed, ""), (retry, "other")):
                with pytest.raises(grpc.RpcError) as refused:
                    create(other_spec, key, display_name=display_name)
                assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS, refused.value.details()

        # A key stored before: the hash of the request's bytes, `dispatch` explicit, the key left out.
        key = str(uuid.uuid4())
        job_id = create(with_empty, key).job.job_id
        old_hash = hashlib.sha256(
            jobs_pb2.CreateJobRequest(spec=with_empty, dispatch=False).SerializeToString(deterministic=True)
        ).hexdigest()
        with create_engine(backend.database_url).begin() as connection:
            connection.execute(
                text("UPDATE jobs SET request_hash = :hash WHERE job_id = :job"), {"hash": old_hash, "job": job_id}
            )
        assert create(with_empty, key).job.job_id == job_id
        with pytest.raises(grpc.RpcError) as refused:
            create(with_empty, key, display_name="other")
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        backend.close()


def test_the_jobs_client_retries_create_job_with_one_request_id(sqlite_url: str, tmp_path: Path):
    """The first CreateJob is committed but its response is lost (the client's deadline passes while the backend
    is stopped after the commit): the client's retry must return that job, not a second one."""
    with FakeTrainer() as trainer:
        backend = start_backend(sqlite_url, tmp_path, trainer.address)
        try:
            sent: list[str] = []
            with JobsClient(backend.address, backend.internal_token) as client:
                original = client._stub.CreateJob

                class LosesFirstResponse:
                    def __call__(self, request, **kwargs):  # type: ignore[no-untyped-def]
                        sent.append(request.request_id)
                        response = original(request, **kwargs)
                        if len(sent) == 1:
                            raise _Unavailable()
                        return response

                client._stub.CreateJob = LosesFirstResponse()  # type: ignore[method-assign]
                created = client.create_job(framework="timm", model="resnet10t", dataset="digits")
            assert len(sent) == 2 and sent[0] == sent[1] and sent[0]
            listed = backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(), metadata=auth(backend.internal_token)).jobs
            assert [job.job_id for job in listed] == [created.job.job_id]
        finally:
            backend.close()


class _Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "the response was lost"


# --- 14: dispatch outside the CreateJob call ---------------------------------------------------------------


def test_a_create_job_with_a_short_deadline_is_still_dispatched(sqlite_url: str, tmp_path: Path):
    with FakeTrainer(accept_delay_s=1.0, reply_delay_s=1.0) as trainer:
        backend = start_backend(sqlite_url, tmp_path, trainer.address)
        try:
            stub, metadata = backend.jobs(), auth(backend.internal_token)
            created = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=0.5)
            assert created.job.status == common_pb2.JOB_STATUS_QUEUED
            job_id = created.job.job_id
            job = wait_until(
                lambda: (
                    (
                        j := stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10).job
                    ).trainer_address
                    and j
                ),
                30,
                "the job dispatched",
            )
            assert job.trainer_address == trainer.address  # type: ignore[attr-defined]
            assert [run.job_id for run in trainer.training(job_id)] == [job_id]
            assert backend.job_status(job_id) == "QUEUED"
        finally:
            backend.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_restarted_backend_dispatches_its_queued_jobs(database_url: str, tmp_path: Path):
    port = free_port()
    backend = start_backend(database_url, tmp_path, f"127.0.0.1:{port}")
    try:
        stub, metadata = backend.jobs(), auth(backend.internal_token)
        created = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30)
        job_id = created.job.job_id
        assert created.job.status == common_pb2.JOB_STATUS_QUEUED  # the trainer is down: the job waits
        backend.kill()
        with FakeTrainer(port=port) as trainer:
            backend.restart()
            wait_until(lambda: trainer.training(job_id), 30, "the queued job dispatched after the restart")
            wait_until(
                lambda: (
                    backend.jobs()
                    .GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10)
                    .job.trainer_address
                ),
                30,
                "the trainer recorded",
            )
            assert backend.job_status(job_id) == "QUEUED"
            assert len(trainer.runs_of(job_id)) == 1
    finally:
        backend.close()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_backend_killed_during_start_training_leaves_a_claim_that_soon_expires(database_url: str, tmp_path: Path):
    """The backend is SIGKILLed while its StartTraining call hangs, so its claim on the job is never released. A
    claim is a short lease renewed while the call lasts: the restarted backend dispatches the job within
    seconds, not after the longest possible pass over the replicas (90 s)."""
    port = free_port()
    with FakeTrainer(port=port, accept_delay_s=5.0, refuse=grpc.StatusCode.UNAVAILABLE) as hanging:
        backend = start_backend(database_url, tmp_path, f"127.0.0.1:{port}")
        stub, metadata = backend.jobs(), auth(backend.internal_token)
        created = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30)
        job_id = created.job.job_id
        wait_until(lambda: hanging.calls.get("StartTraining"), 30, "the backend inside StartTraining")
        backend.kill()
    try:
        with FakeTrainer(port=port) as trainer:
            backend.restart()
            wait_until(lambda: trainer.training(job_id), 30, "the job dispatched by the restarted backend")
            assert len(trainer.runs_of(job_id)) == 1
    finally:
        backend.close()


# --- 17: the lease and a spool still being replayed ----------------------------------------------------------


def test_the_lease_waits_while_an_ended_run_still_delivers_telemetry(sqlite_url: str, tmp_path: Path):
    """The run ended (the trainer says SUCCEEDED) but its spool replay keeps delivering points for longer than
    the lease; then the final status arrives. The job ends COMPLETED, and the lease asked with ListTrainings."""
    with FakeTrainer() as trainer:
        backend = start_backend(
            sqlite_url, tmp_path, trainer.address, TP_TRAINER_LEASE_S="1.5", TP_WATCH_INTERVAL_S="0.2"
        )
        try:
            stub, metadata = backend.jobs(), auth(backend.internal_token)
            created = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30)
            job_id, token = created.job.job_id, created.telemetry_token
            wait_until(lambda: trainer.training(job_id), 30, "the job dispatched")
            telemetry = backend.telemetry()
            telemetry.UpdateStatus(
                telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING),
                metadata=auth(token),
                timeout=10,
            )
            trainer.finish(job_id)  # the process exited; its trainer now replays the spool, slowly
            for sequence in range(1, 21):  # 4 s of replay: more than twice the lease
                telemetry.StreamMetrics(
                    iter(
                        [
                            telemetry_pb2.StreamMetricsRequest(
                                job_id=job_id,
                                points=[
                                    telemetry_pb2.MetricPoint(key="loss", value=1.0, sequence=sequence, wall_time=1.0)
                                ],
                            )
                        ]
                    ),
                    metadata=auth(token),
                    timeout=10,
                )
                time.sleep(0.2)
                assert backend.job_status(job_id) == "RUNNING", f"failed during the replay, after {sequence} points"
            telemetry.UpdateStatus(
                telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_COMPLETED),
                metadata=auth(token),
                timeout=10,
            )
            assert backend.job_status(job_id) == "COMPLETED"
            assert trainer.calls.get("ListTrainings", 0) >= 3
            assert trainer.calls.get("GetTraining", 0) == 0
        finally:
            backend.close()


def _create_queued_job(store: Any, dispatcher: Any, job_id: str) -> None:
    """A QUEUED timm job in the store, as CreateJob leaves it for the dispatcher."""
    store.create_job(
        job_id=job_id,
        token_hash=dispatcher.job_token(job_id)[1],
        queued=True,
        framework="timm",
        model_name="resnet10t",
        display_name="",
        model_config={"name": "resnet10t"},
        dataset_config={"name": "digits"},
        training_config={"epochs": 1},
        advanced_config={},
    )


def test_the_dispatcher_forgets_jobs_that_ended(sqlite_url: str):
    """The lease's and the dispatcher's per-job memory is pruned once jobs end (in process, on one database)."""
    import asyncio

    from trainingplatform_backend.db import create_db_engine, migrate
    from trainingplatform_backend.dispatch import Dispatcher, DispatchSettings
    from trainingplatform_backend.store import Store
    from trainingplatform_backend.subscriptions import Hub

    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)

    async def scenario(trainer: FakeTrainer) -> None:
        store = Store(engine)
        settings = DispatchSettings(
            trainers={"timm": [trainer.address]}, telemetry_endpoint="127.0.0.1:1", internal_token="secret"
        )
        dispatcher = Dispatcher(store, Hub(capacity_points=100), settings)
        jobs = []
        for _ in range(3):
            job_id = str(uuid.uuid4())
            _create_queued_job(store, dispatcher, job_id)
            jobs.append(job_id)
        while True:  # one dispatch of a framework at a time, oldest first
            await dispatcher.dispatch_queued()
            if not dispatcher._dispatching:
                break
            await asyncio.gather(*(task for _, task in dispatcher._dispatching.values()))
        assert [run.job_id for run in trainer.runs] == jobs
        await dispatcher.check_leases()
        assert set(dispatcher._quiet_since) == set(jobs) == set(dispatcher._last_committed)
        trainer.finish(jobs[0])
        await dispatcher.check_leases()
        assert set(dispatcher._run_ended_at) == {jobs[0]}
        for job_id in jobs:
            store.transition(job_id, "CANCELLED")
        await dispatcher.check_leases()
        await dispatcher.dispatch_queued()
        for memory in (
            dispatcher._quiet_since,
            dispatcher._last_committed,
            dispatcher._run_ended_at,
            dispatcher._next_try,
            dispatcher._delay,
            dispatcher._dispatching,
            dispatcher._announced,
        ):
            assert not memory
        await dispatcher.stop()

    try:
        with FakeTrainer() as trainer:
            asyncio.run(scenario(trainer))
    finally:
        engine.dispose()


def test_a_dispatch_longer_than_the_claim_lease_keeps_its_claim(sqlite_url: str, monkeypatch: pytest.MonkeyPatch):
    """StartTraining takes 2.5 s, the claim lease is 1 s: the claim is renewed while the call lasts, so no other
    backend can take the job meanwhile; once the trainer accepts, the claim is gone (in process, on one
    database)."""
    import asyncio

    from trainingplatform_backend import dispatch
    from trainingplatform_backend.db import create_db_engine, migrate
    from trainingplatform_backend.store import Store, utcnow
    from trainingplatform_backend.subscriptions import Hub

    monkeypatch.setattr(dispatch, "CLAIM_LEASE_S", 1.0)
    monkeypatch.setattr(dispatch, "CLAIM_RENEW_S", 0.2)
    migrate(sqlite_url)
    engine = create_db_engine(sqlite_url)

    async def scenario(trainer: FakeTrainer) -> None:
        store = Store(engine)
        settings = dispatch.DispatchSettings(
            trainers={"timm": [trainer.address]}, telemetry_endpoint="127.0.0.1:1", internal_token="secret"
        )
        dispatcher = dispatch.Dispatcher(store, Hub(capacity_points=100), settings)
        job_id = str(uuid.uuid4())
        _create_queued_job(store, dispatcher, job_id)
        await dispatcher.dispatch_queued()
        for _ in range(4):  # 2 s in all: twice the lease
            await asyncio.sleep(0.5)
            assert trainer.calls.get("StartTraining") == 1 and not trainer.runs  # still inside the call
            queued = [queued_id for queued_id, _ in store.dispatchable(utcnow())]
            assert job_id not in queued, "the claim expired while the dispatch lasted"
            now = utcnow()
            assert store.claim_dispatch(job_id, now=now, until=now) is None  # another backend cannot take it
        await asyncio.gather(*(task for _, task in dispatcher._dispatching.values()))
        assert [run.job_id for run in trainer.runs] == [job_id]
        with engine.connect() as conn:
            claimed = conn.exec_driver_sql(
                "SELECT dispatch_claimed_until FROM jobs WHERE job_id = ?", (job_id,)
            ).scalar()
        assert claimed is None
        await dispatcher.stop()

    try:
        with FakeTrainer(accept_delay_s=2.5) as trainer:
            asyncio.run(scenario(trainer))
    finally:
        engine.dispose()


# --- 15: two writers for one job ------------------------------------------------------------------------------


def _points(job_id: str, value: float) -> Iterator[telemetry_pb2.StreamMetricsRequest]:
    yield telemetry_pb2.StreamMetricsRequest(
        job_id=job_id,
        points=[telemetry_pb2.MetricPoint(key="loss", value=value, sequence=s, wall_time=1.0) for s in range(1, 6)],
    )


def test_two_writers_for_one_job(sqlite_url: str, tmp_path: Path):
    """Replica A accepts the job but answers after StartTraining's deadline; the job goes to replica B as attempt
    2. A's run (attempt 1) is cancelled, and its telemetry is refused as superseded (ABORTED) instead of being
    mixed with B's under the same sequence numbers."""
    with FakeTrainer(reply_delay_s=3.0) as late, FakeTrainer() as second:
        backend = BackendProcess(
            sqlite_url,
            tmp_path / "data",
            extra_env={"TP_TRAINERS": f"timm={late.address},timm={second.address}", "TP_TRAINER_CALL_TIMEOUT_S": "1"},
        )
        backend.start()
        try:
            stub, metadata = backend.jobs(), auth(backend.internal_token)
            job_id = stub.CreateJob(jobs_pb2.CreateJobRequest(spec=SPEC), metadata=metadata, timeout=30).job.job_id
            wait_until(lambda: second.training(job_id), 30, "the job handed to the second replica")
            first_run, second_run = late.runs_of(job_id)[0], second.runs_of(job_id)[0]
            assert first_run.telemetry_token != second_run.telemetry_token  # a token per attempt
            wait_until(lambda: not late.training(job_id), 10, "the first attempt's run cancelled")
            telemetry = backend.telemetry()
            # The winner writes; the superseded writer is refused, for good.
            winner = telemetry.StreamMetrics(
                _points(job_id, 2.0), metadata=auth(second_run.telemetry_token), timeout=10
            )
            assert winner.points_committed == 5
            with pytest.raises(grpc.RpcError) as refused:
                telemetry.StreamMetrics(_points(job_id, 1.0), metadata=auth(first_run.telemetry_token), timeout=10)
            assert refused.value.code() == grpc.StatusCode.ABORTED
            assert "superseded" in refused.value.details()
            with pytest.raises(grpc.RpcError) as status_refused:
                telemetry.UpdateStatus(
                    telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING),
                    metadata=auth(first_run.telemetry_token),
                    timeout=10,
                )
            assert status_refused.value.code() == grpc.StatusCode.ABORTED
            assert [row[2] for row in backend.metric_rows(job_id)] == [2.0] * 5  # only the winner's points
            # An attempt token is checked like any other: a forged one is unknown.
            with pytest.raises(grpc.RpcError) as forged:
                telemetry.GetStreamCursor(
                    telemetry_pb2.GetStreamCursorRequest(job_id=job_id),
                    metadata=auth(f"{job_id}.3.{second_run.telemetry_token.rsplit('.', 1)[1]}"),
                    timeout=10,
                )
            assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
            job = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=10).job
            assert job.trainer_address == second.address
        finally:
            backend.close()
