"""The dispatcher in process, on a real database and real trainer services (`support.fake_trainer.FakeTrainer`):
which jobs it takes, how it picks among replicas, and when it gives up. Cheaper than a backend process per case;
the backend's own loops are left out, each test drives the rounds itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.fake_trainer import FakeTrainer
from trainingplatform_backend import dispatch, statemachine
from trainingplatform_backend.db import create_db_engine, migrate
from trainingplatform_backend.store import Store
from trainingplatform_backend.subscriptions import Hub


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
    """Rounds until no dispatch is in flight and none starts (backoffs ignored: every round is due)."""
    while True:
        dispatcher._next_try.clear()
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
