"""The dispatcher in process, on a real database and real trainer services (`support.fake_trainer.FakeTrainer`):
which jobs it takes, how it picks among replicas, and when it gives up. Cheaper than a backend process per case;
the backend's own loops are left out, each test drives the rounds itself."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event, update
from sqlalchemy.exc import OperationalError
from support.backend import free_port
from support.fake_trainer import FakeTrainer
from trainingplatform.common.v1 import common_pb2
from trainingplatform_backend import dispatch, statemachine
from trainingplatform_backend.db import create_db_engine, migrate
from trainingplatform_backend.models import IngestCursor, Job
from trainingplatform_backend.store import Store
from trainingplatform_backend.subscriptions import Hub
from trainingplatform_sdk.errors import InvalidArgumentError, NotFoundError


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    migrate(url)
    engine = create_db_engine(url)
    try:
        yield Store(engine)
    finally:
        engine.dispose()


def new_job(store: Store, *, dispatch: bool = True, framework: str = "timm") -> str:
    """A job as CreateJob stores it: QUEUED for the dispatcher, or PENDING with dispatch=false."""
    job_id = str(uuid.uuid4())
    store.create_job(
        job_id=job_id,
        queued=dispatch,
        framework=framework,
        model_name="resnet10t",
        display_name="",
        model_config={"name": "resnet10t"},
        dataset_config={"name": "digits"},
        training_config={"epochs": 1},
        advanced_config={},
    )
    return job_id


def dispatcher_of(store: Store, trainers: dict[str, list[str]], **settings: Any) -> dispatch.Dispatcher:
    return dispatch.Dispatcher(
        store,
        Hub(capacity_points=100),
        dispatch.DispatchSettings(
            trainers=trainers, telemetry_endpoint="127.0.0.1:1", internal_token="secret", **settings
        ),
    )


async def settle(dispatcher: dispatch.Dispatcher) -> None:
    """Rounds until no dispatch is in flight and none starts (a framework whose jobs wait backs off: its next
    round is not due yet)."""
    while True:
        await dispatcher.dispatch_queued()
        if not dispatcher._dispatching:
            return
        await asyncio.gather(*(task for _, task in dispatcher._dispatching.values()))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# --- which jobs the dispatcher takes ----------------------------------------------------------------------------


def test_a_job_created_with_dispatch_false_is_never_dispatched_even_once_its_reporter_says_queued(store: Store):
    """Its reporter (a wrapper around a batch queue) may say QUEUED; the dispatcher took every QUEUED job without a
    trainer, so the job trained twice: once in the user's process, once on a trainer."""

    async def scenario() -> None:
        with FakeTrainer() as trainer:
            dispatcher = dispatcher_of(store, {"timm": [trainer.address]})
            own = new_job(store, dispatch=False)
            store.transition(own, statemachine.QUEUED, reason="waiting in the SLURM queue")
            queued = new_job(store)  # newer: the dispatcher takes a framework's jobs oldest first
            await settle(dispatcher)
            assert [run.job_id for run in trainer.runs] == [queued]
            assert store.get_job(own).job.status == statemachine.QUEUED
            assert store.claim_dispatch(own, now=dispatch.utcnow(), until=dispatch.utcnow()) is None
            store.transition(own, statemachine.RUNNING, reason="the batch job started")  # its reporter goes on
            await dispatcher.stop()

    run(scenario)


# --- replicas that refuse -------------------------------------------------------------------------------------


class _RefusesValidation(FakeTrainer):
    """A trainer that has no file at the spec's dataset path (a path only another host has)."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "no dataset at /data/digits on {}"

    def StartTraining(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.validate_only:
            self._count("ValidateTraining")
            context.abort(self.code, self.reason.format(self.address))
        return super().StartTraining(request, context)


class _RefusesSpec(_RefusesValidation):
    """A trainer that refuses the spec itself (INVALID_ARGUMENT), as every replica would."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "unknown model on {}"


def test_one_replica_refusing_for_its_own_host_does_not_fail_the_jobs(store: Store):
    """The least-loaded replica answered FAILED_PRECONDITION (its disk is full) and every new job failed; now the
    other replica gets the job, and the refusing one goes last for a while."""

    async def scenario() -> None:
        with FakeTrainer(refuse=grpc.StatusCode.FAILED_PRECONDITION) as broken, FakeTrainer() as healthy:
            dispatcher = dispatcher_of(store, {"timm": [broken.address, healthy.address]})
            first = new_job(store)
            await settle(dispatcher)
            assert store.get_job(first).job.status == statemachine.QUEUED  # dispatched, not failed
            assert [run.job_id for run in healthy.runs] == [first]
            # The healthy replica runs one job, the broken none: least loaded would ask the broken one first.
            second = new_job(store)
            await settle(dispatcher)
            assert [run.job_id for run in healthy.runs] == [first, second]
            assert broken.calls["StartTraining"] == 1
            await dispatcher.stop()

    run(scenario)


def test_a_replica_that_did_not_answer_goes_after_those_that_did(store: Store, caplog: pytest.LogCaptureFixture):
    """A replica that accepts connections but never answers (a blackholed host) has no jobs, so least loaded asked
    it first in every pass and each job waited out the call timeout before the healthy replica got it. Now a
    replica whose last StartTraining was UNAVAILABLE or DEADLINE_EXCEEDED goes after those that answered."""
    silent = socket.socket()  # listens (the kernel completes connections) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    blackholed = f"127.0.0.1:{silent.getsockname()[1]}"

    async def scenario() -> None:
        with FakeTrainer() as healthy:
            dispatcher = dispatcher_of(store, {"timm": [blackholed, healthy.address]}, call_timeout_s=0.5)
            first = new_job(store)  # nothing known yet: the silent replica, listed first and least loaded, is asked
            await settle(dispatcher)
            assert [run.job_id for run in healthy.runs] == [first]
            assert store.get_job(first).job.dispatch_attempt == 2  # attempt 1 went to the silent replica
            # The healthy replica runs one job, the silent none: least loaded would ask the silent one first.
            second = new_job(store)
            await settle(dispatcher)
            assert [run.job_id for run in healthy.runs] == [first, second]
            job = store.get_job(second).job
            assert (job.dispatch_attempt, job.dispatch_attempt_address) == (1, healthy.address)  # the only one asked
            # Not dropped: it is still tried, after the replicas that answered.
            assert dispatcher._replicas("timm") == [healthy.address, blackholed]
            await dispatcher.stop()

    with caplog.at_level(logging.INFO, logger="trainingplatform_backend.dispatch"):
        try:
            run(scenario)
        finally:
            silent.close()
    superseded = [r.getMessage() for r in caplog.records if "cancelling any run on" in r.getMessage()]
    assert len(superseded) == 1  # the first job's; the second was never sent to the silent replica


def test_a_job_every_replica_refuses_fails_naming_each_reason(store: Store):
    async def scenario() -> None:
        with (
            FakeTrainer(refuse=grpc.StatusCode.FAILED_PRECONDITION) as full,
            FakeTrainer(refuse=grpc.StatusCode.NOT_FOUND) as elsewhere,
        ):
            dispatcher = dispatcher_of(store, {"timm": [full.address, elsewhere.address]})
            job_id = new_job(store)
            await settle(dispatcher)
            job = store.get_job(job_id).job
            assert job.status == statemachine.FAILED
            assert job.error_message.startswith("every timm trainer refused the job: ")
            assert f"{full.address}: FAILED_PRECONDITION" in job.error_message
            assert f"{elsewhere.address}: NOT_FOUND" in job.error_message
            await dispatcher.stop()
            # With one replica, its own message, as for any refusal.
            alone = dispatcher_of(store, {"timm": [elsewhere.address]})
            job_id = new_job(store)
            await settle(alone)
            job = store.get_job(job_id).job
            assert job.status == statemachine.FAILED
            assert job.error_message == f"trainer {elsewhere.address} refused the job: the fake trainer refuses"
            await alone.stop()

    run(scenario)


def test_a_bad_spec_still_fails_at_once(store: Store):
    async def scenario() -> None:
        with FakeTrainer(refuse=grpc.StatusCode.INVALID_ARGUMENT) as strict, FakeTrainer() as other:
            dispatcher = dispatcher_of(store, {"timm": [strict.address, other.address]})
            job_id = new_job(store)
            await settle(dispatcher)
            job = store.get_job(job_id).job
            assert job.status == statemachine.FAILED
            assert job.error_message == f"trainer {strict.address} refused the job: the fake trainer refuses"
            assert "StartTraining" not in other.calls
            await dispatcher.stop()

    run(scenario)


def test_create_job_validation_refuses_a_missing_path_only_when_every_replica_lacks_it(store: Store):
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )

    async def scenario() -> None:
        with _RefusesValidation() as lacking, FakeTrainer() as having, _RefusesValidation() as lacking_too:
            dispatcher = dispatcher_of(store, {"timm": [lacking.address, having.address]})
            await dispatcher.validate(spec, "job-1")  # the second replica has it: accepted
            assert having.calls["ValidateTraining"] == 1
            await dispatcher.stop()
            dispatcher = dispatcher_of(store, {"timm": [lacking.address, lacking_too.address]})
            with pytest.raises(NotFoundError) as refused:
                await dispatcher.validate(spec, "job-2")
            for trainer in (lacking, lacking_too):
                assert f"{trainer.address}: no dataset at /data/digits on {trainer.address}" in str(refused.value)
            await dispatcher.stop()

    run(scenario)


# --- a framework without a trainer ----------------------------------------------------------------------------


def test_create_job_validation_is_decided_by_the_replica_that_answers_not_the_first_listed(
    store: Store, caplog: pytest.LogCaptureFixture
):
    """The replicas were asked one after another: one listed first that accepts connections but never answers (a
    blackholed host) took the whole timeout, the others were never asked, and every spec was accepted unchecked.
    Now they are asked at once and the first decisive answer (an accept or a refusal of the spec) decides."""
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="resnet10t"),
        dataset=common_pb2.DatasetConfig(name="digits"),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    silent = socket.socket()  # listens (the kernel completes connections) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    blackholed = f"127.0.0.1:{silent.getsockname()[1]}"

    async def scenario() -> None:
        with FakeTrainer() as healthy, _RefusesSpec() as strict, _RefusesValidation() as lacking:
            dispatcher = dispatcher_of(store, {"timm": [blackholed, healthy.address]})
            await dispatcher.validate(spec, "job-1")
            assert healthy.calls["ValidateTraining"] == 1  # the answer that decided
            await dispatcher.stop()
            dispatcher = dispatcher_of(store, {"timm": [blackholed, strict.address]})
            with pytest.raises(InvalidArgumentError, match=f"unknown model on {strict.address}"):
                await dispatcher.validate(spec, "job-2")
            await dispatcher.stop()
            # A NOT_FOUND still refuses only when every replica answers it: the silent one never does.
            dispatcher = dispatcher_of(store, {"timm": [blackholed, lacking.address]})
            await dispatcher.validate(spec, "job-3", timeout_s=0.5)
            assert lacking.calls["ValidateTraining"] == 1
            await dispatcher.stop()

    with caplog.at_level(logging.INFO, logger="trainingplatform_backend.dispatch"):
        try:
            run(scenario)
        finally:
            silent.close()
    decided = [r.getMessage() for r in caplog.records if "job-1" in r.getMessage() or "job-2" in r.getMessage()]
    assert not [message for message in decided if "could not validate" in message or "accepting it" in message]
    assert any("job-3" in r.getMessage() and "accepting it" in r.getMessage() for r in caplog.records)


def test_a_job_whose_framework_lost_its_trainers_times_out_with_a_warning(
    store: Store, caplog: pytest.LogCaptureFixture
):
    """Queued while TP_TRAINERS named a timm trainer; the backend restarted without one. The job stayed QUEUED for
    ever, with no log line; with TP_TRAINERS empty the dispatch loop did not even start."""

    async def scenario() -> None:
        job_id = new_job(store)
        waiting = dispatcher_of(store, {"ultralytics": ["127.0.0.1:1"]})
        with caplog.at_level("INFO", logger="trainingplatform_backend.dispatch"):
            await settle(waiting)
        assert store.get_job(job_id).job.status == statemachine.QUEUED  # not yet past TP_DISPATCH_TIMEOUT_S
        # (Only the "waits" line: under a loaded machine a claim may also expire and say so.)
        [warning] = [record for record in caplog.records if f"job {job_id} waits" in record.getMessage()]
        assert warning.levelname == "WARNING"
        assert "no timm trainer is configured (TP_TRAINERS)" in warning.getMessage()
        await waiting.stop()
        # No trainer at all, and the job past its timeout: the backend's own loop fails it.
        none = dispatcher_of(store, {}, dispatch_timeout_s=0.0)
        none.start()
        try:
            deadline = time.monotonic() + 60
            while store.get_job(job_id).job.status == statemachine.QUEUED and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await none.stop()
        job = store.get_job(job_id).job
        assert job.status == statemachine.FAILED
        assert job.error_message == (
            "no timm trainer accepted the job within 0 s: no timm trainer is configured (TP_TRAINERS)"
        )

    run(scenario)


# --- the dispatch timeout ----------------------------------------------------------------------------------------


def _age(store: Store, job_id: str, column: str, hours: float) -> None:
    """Moves one of the job's times `hours` into the past, as if it had waited that long."""
    with store.engine.begin() as conn:
        conn.execute(
            update(Job).where(Job.job_id == job_id).values({column: dispatch.utcnow() - dt.timedelta(hours=hours)})
        )


def test_time_waiting_for_a_busy_trainer_does_not_count_toward_the_dispatch_timeout(store: Store):
    """TP_DISPATCH_TIMEOUT_S counted from creation even while the trainer answered RESOURCE_EXHAUSTED, so a job
    queued behind a training longer than the timeout failed although its trainer was healthy."""

    async def scenario() -> None:
        with FakeTrainer(capacity=0) as busy:
            job_id = new_job(store)
            _age(store, job_id, "created_at", 2)  # queued two hours ago, behind long trainings
            waiting = dispatcher_of(store, {"timm": [busy.address]}, dispatch_timeout_s=600.0)
            await settle(waiting)
            await waiting.stop()
            assert store.get_job(job_id).job.status == statemachine.QUEUED
        # A fresh backend (the busy answer is in the database) whose trainer is gone: the time since the last busy
        # answer counts, not the time since creation.
        gone = dispatcher_of(store, {"timm": [f"127.0.0.1:{free_port()}"]}, dispatch_timeout_s=600.0)
        await settle(gone)
        assert store.get_job(job_id).job.status == statemachine.QUEUED
        _age(store, job_id, "dispatch_busy_at", 1)  # no trainer answered for an hour
        gone._next_try.clear()
        await settle(gone)
        await gone.stop()
        job = store.get_job(job_id).job
        assert job.status == statemachine.FAILED
        assert job.error_message.startswith("no timm trainer accepted the job within 600 s: 127.0.0.1:")
        assert "UNAVAILABLE" in job.error_message

    run(scenario)


# --- the dispatch claim -------------------------------------------------------------------------------------------


def test_a_failed_claim_renewal_is_tried_again_and_does_not_fail_the_dispatch(
    store: Store, monkeypatch: pytest.MonkeyPatch
):
    """One database error while renewing the claim (a failover, a dropped connection) ended the renewal, so the
    claim expired mid-dispatch and another backend could take the job, and its exception, raised again when the
    dispatch ended, made a dispatch the trainer had accepted look failed."""
    monkeypatch.setattr(dispatch, "CLAIM_LEASE_S", 1.0)
    monkeypatch.setattr(dispatch, "CLAIM_RENEW_S", 0.2)
    renew = store.renew_dispatch
    failures = []

    def renew_once_failing(job_id: str, *, held: dt.datetime, until: dt.datetime) -> bool:
        if not failures:
            failures.append(job_id)
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))
        return renew(job_id, held=held, until=until)

    monkeypatch.setattr(store, "renew_dispatch", renew_once_failing)

    async def scenario() -> None:
        with FakeTrainer(accept_delay_s=2.0) as trainer:
            dispatcher = dispatcher_of(store, {"timm": [trainer.address]})
            job_id = new_job(store)
            await dispatcher.dispatch_queued()
            for _ in range(3):  # 1.5 s in all: past the first claim's lease, still inside StartTraining
                await asyncio.sleep(0.5)
                now = dispatch.utcnow()
                assert store.claim_dispatch(job_id, now=now, until=now) is None, "the claim expired"
            await asyncio.gather(*(task for _, task in dispatcher._dispatching.values()))
            assert failures == [job_id]
            assert store.get_job(job_id).job.trainer_address == trainer.address
            assert job_id not in dispatcher._next_try  # not backed off as a dispatch that raised
            await dispatcher.stop()

    run(scenario)


def test_a_late_answer_to_a_superseded_attempt_is_not_recorded(store: Store):
    job_id = new_job(store)
    first, _ = store.begin_attempt(job_id, "trainer-a:1")
    second, superseded = store.begin_attempt(job_id, "trainer-b:1")  # another backend took the job over
    assert (first, second, superseded) == (1, 2, "trainer-a:1")
    assert store.set_dispatch(job_id, attempt=first, trainer_address="trainer-a:1", trainer_run_id="run-a") is None
    assert store.get_job(job_id).job.trainer_address == ""
    status = store.set_dispatch(job_id, attempt=second, trainer_address="trainer-b:1", trainer_run_id="run-b")
    assert status == statemachine.QUEUED
    job = store.get_job(job_id).job
    assert (job.trainer_address, job.trainer_run_id) == ("trainer-b:1", "run-b")


# --- the lease's read -------------------------------------------------------------------------------------------


def test_the_lease_reads_the_cursors_of_live_jobs_only(store: Store):
    """Each lease round aggregated the whole ingest_cursors table (every job ever run: 183 ms at 300,000 jobs on
    PostgreSQL, every round of every backend process) before joining the few live jobs. The statement it runs must
    read the cursors by key, per live job, and still sum each live job's streams."""
    live, ended = new_job(store), new_job(store)
    new_job(store)  # QUEUED, no trainer yet: not the lease's
    for job_id in (live, ended):
        attempt, _ = store.begin_attempt(job_id, "trainer:1")
        store.set_dispatch(job_id, attempt=attempt, trainer_address="trainer:1", trainer_run_id=f"run-{job_id}")
    store.transition(ended, statemachine.CANCELLED)
    with store.engine.begin() as conn:
        conn.execute(update(IngestCursor).values(last_sequence=IngestCursor.job_pk * 10 + 1))
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "ingest_cursors" in statement:
            statements.append(statement)

    dispatcher = dispatcher_of(store, {"timm": ["trainer:1"]})
    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        rows = dispatcher._live_jobs()
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    pk = store.job_pk(live)
    assert list(rows) == [(live, "trainer:1", 2 * (pk * 10 + 1))]  # both streams, this job's only
    [statement] = statements
    with store.engine.connect() as conn:
        statuses = [statemachine.QUEUED, statemachine.RUNNING]
        plan = [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, (*statuses, ""))]
    assert any(step.startswith("SEARCH ingest_cursors") for step in plan), plan
    assert not any(step.startswith("SCAN ingest_cursors") for step in plan), plan
