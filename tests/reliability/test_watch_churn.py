"""Watchers coming and going while a trainer logs. Each time a job nobody watched gets a subscriber, the backend
ends the trainer's open streams with OK (so that it hears of the watcher at once), and the trainer resumes from the
cursor. However often that happens, mid-message or between messages, every point and record is stored once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess, auth, metered_backend
from support.metrics import scrape
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger


@pytest.fixture
def metered(database_url: str, tmp_path: Path) -> Iterator[tuple[BackendProcess, int]]:
    with metered_backend(database_url, tmp_path / "backend-data") as metered:
        yield metered


@pytest.mark.timeout(180)
def test_watchers_coming_and_going_lose_nothing_and_store_nothing_twice(
    metered: tuple[BackendProcess, int],
    tmp_path: Path,
    rng: random.Random,
    open_logger: Callable[..., TrainingLogger],
) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    logger = open_logger(
        job_id,
        backend_address=backend.address,
        token=token,
        spool_dir=tmp_path / "spool",
        settings=LoggerSettings(flush_interval_s=0.01, unwatched_flush_interval_s=0.2),
    )
    stop = threading.Event()
    logged = [0, 0]  # metric points, log records

    def train() -> None:
        while not stop.is_set():
            for _ in range(10):
                logged[0] += 1
                logger.log_metric("train/loss", 1.0 / logged[0], step=logged[0])
            logged[1] += 1
            logger.log_message(f"step {logged[0]}", step=logged[0])
            time.sleep(0.002)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    watches = 0
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            call = backend.jobs().SubscribeTelemetry(
                jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token)
            )
            next(call)  # registered: the job is watched
            time.sleep(rng.uniform(0.02, 0.3))
            call.cancel()  # watched by nobody again once the backend sees the call end
            watches += 1
            time.sleep(rng.uniform(0.02, 0.3))
    finally:
        stop.set()
        trainer.join(10)
    report = logger.close(60)
    assert report.error is None
    assert (report.committed_metrics, report.committed_logs) == (logged[0], logged[1])
    assert backend.metric_sequences(job_id) == list(range(1, logged[0] + 1))
    assert backend.log_sequences(job_id) == list(range(1, logged[1] + 1))
    ended = scrape(port).value("tp_backend_streams_ended_for_watch_total")
    # Each watch that found the trainer's streams open ended them (a stream opened after the subscriber came is not).
    assert 2 <= ended <= 2 * watches, (ended, watches)
