"""How many messages a logger sends for its points, counted by the backend: fewer for a job nobody watches (partial
batches every `unwatched_flush_interval_s` while the backend's cursor says `unwatched`, every `flush_interval_s`
again once someone subscribes: the backend ends the job's streams and the sender reads the cursor at once), and more,
smaller ones while points come faster than `target_batch_points` per interval. While nobody watches, the cursor is
read every `unwatched_cursor_poll_interval_s`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth, metered_backend
from support.metrics import scrape
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.sender import loop
from trainingplatform_sdk.telemetry.sender.connection import Connection
from trainingplatform_sdk.telemetry.sender.loop import Sender

MESSAGES = "tp_backend_messages_committed_total"


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[BackendProcess, int]]:
    with metered_backend(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data") as metered:
        yield metered


@contextlib.contextmanager
def _warm_logger(
    backend: BackendProcess, job_id: str, token: str, tmp_path: Path, settings: LoggerSettings
) -> Iterator[TrainingLogger]:
    """A logger whose streams are open and whose first point is committed (the backend's cursor answered)."""
    with TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool", settings=settings
    ) as logger:
        logger.log_metric("warm-up", 0.0)
        assert logger.flush(30)
        yield logger


def _messages(port: int) -> float:
    return scrape(port).value(MESSAGES, stream="metrics")


def _log_steps(logger: TrainingLogger, first: int, seconds: float) -> int:
    """A point every 10 ms for `seconds`, as a trainer logging each step; returns the next step."""
    step = first
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        logger.log_metric("train/batch_loss", 0.5, step=step)
        step += 1
        time.sleep(0.01)
    return step


def test_a_job_nobody_watches_gets_fewer_messages_until_someone_subscribes(
    metered: tuple[BackendProcess, int], tmp_path: Path
) -> None:
    backend, port = metered
    job_id, token = backend.create_job()
    # A cursor read a minute apart while unwatched: only the backend ending the stream can tell of the subscriber.
    settings = LoggerSettings(
        flush_interval_s=0.02, unwatched_flush_interval_s=1.0, unwatched_cursor_poll_interval_s=60
    )
    with _warm_logger(backend, job_id, token, tmp_path, settings) as logger:
        before = _messages(port)
        step = _log_steps(logger, 1, 3.0)
        assert logger.flush(30)
        unwatched = _messages(port) - before
        # About 300 points: at most one message a second (3), the flush, one sent before the cursor said unwatched.
        assert 1 <= unwatched <= 6, unwatched

        subscription = backend.jobs().SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token)
        )
        try:
            next(subscription)
            before = _messages(port)
            # The backend ends the job's stream for the subscriber; the sender resumes from the cursor, which says
            # watched, and sends every 20 ms: about 150 messages in 3 s.
            step = _log_steps(logger, step, 3.0)
            assert logger.flush(30)
            watched = _messages(port) - before
            assert watched >= 30, watched
            assert scrape(port).value("tp_backend_streams_ended_for_watch_total") == 1
        finally:
            subscription.cancel()
        assert logger.close(30).committed_metrics == step
    wait_until(lambda: len(backend.metric_sequences(job_id)) == step, 10, "every point stored")


def _log_fast(logger: TrainingLogger, per_tick: int, seconds: float) -> int:
    """`per_tick` points every 10 ms for `seconds`; returns how many."""
    logged = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for _ in range(per_tick):
            logged += 1
            logger.log_metric("train/batch_loss", 0.5, step=logged)
        time.sleep(0.01)
    return logged


@pytest.mark.parametrize("target", [1000, 50])
def test_points_coming_faster_than_the_target_batch_go_in_smaller_messages_sooner(
    metered: tuple[BackendProcess, int], tmp_path: Path, target: int
) -> None:
    """About 5,000 points/s for 2 s with a 100 ms interval: 500 points per interval. Under a target of 1,000 the
    interval holds (about 20 messages); with a target of 50 partial messages go about every 10 ms (up to 200)."""
    backend, port = metered
    job_id, token = backend.create_job()
    settings = LoggerSettings(flush_interval_s=0.1, unwatched_flush_interval_s=0.1, target_batch_points=target)
    with _warm_logger(backend, job_id, token, tmp_path, settings) as logger:
        before = _messages(port)
        logged = _log_fast(logger, 50, 2.0)
        assert logger.flush(30)
        messages = _messages(port) - before
        assert logger.close(30).committed_metrics == logged + 1
    if target == 1000:
        assert messages <= 30, messages
    else:
        assert messages >= 60, messages


def test_a_job_nobody_watches_costs_its_sender_a_few_wake_ups_a_second_not_one_per_step(
    metered: tuple[BackendProcess, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer logging every 10 ms: while nobody watches, its points wait the long interval, and the sender reads
    the caller's buffer when they are due, not every `flush_interval_s`. Each wake-up costs CPU on the training's
    cores and a context switch of the training thread (bench_training_overhead.py)."""
    wakes = [0]
    drain = Sender._drain

    def counting_drain(self: Sender) -> int:
        wakes[0] += 1
        return drain(self)

    monkeypatch.setattr(Sender, "_drain", counting_drain)
    settings = LoggerSettings(flush_interval_s=0.05, unwatched_flush_interval_s=1.0)
    # past the interval that began watched
    during = _counted_while_unwatched(metered[0], tmp_path, settings, wakes, settle_s=1.0)
    # A flush wake-up and a cursor answer per second (about 6), where each short interval gave 60.
    assert during <= 15, during


def _counted_while_unwatched(
    backend: BackendProcess, tmp_path: Path, settings: LoggerSettings, counter: list[int], settle_s: float
) -> int:
    """How much `counter` grew during 3 s of a step every 10 ms on a job nobody watches, `settle_s` after the cursor
    said so; checks that every point was committed and stored."""
    job_id, token = backend.create_job()
    with _warm_logger(backend, job_id, token, tmp_path, settings) as logger:
        sender = logger._sender
        assert sender is not None
        wait_until(lambda: sender._delivery.unwatched, 10, "the cursor says nobody watches")
        _log_steps(logger, 1, settle_s)
        before = counter[0]
        step = _log_steps(logger, 1000, 3.0)
        during = counter[0] - before
        report = logger.close(30)
    assert step > 1000 and report.committed_metrics == report.logged_metrics
    assert len(backend.metric_sequences(job_id)) == report.logged_metrics
    return during


def test_a_job_nobody_watches_has_its_cursor_read_every_unwatched_interval_not_every_second(
    metered: tuple[BackendProcess, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cursor read costs the backend about as much CPU as a message (bench_cursor_read.py). While nobody
    watches, the sender reads it every `unwatched_cursor_poll_interval_s`; it learns of a subscriber from the backend
    ending its stream instead."""
    reads = [0]
    read_cursor = Connection.read_cursor

    def counting_read(self: Connection, wait_for_ready: bool = False) -> Any:
        reads[0] += 1
        return read_cursor(self, wait_for_ready)

    monkeypatch.setattr(Connection, "read_cursor", counting_read)
    settings = LoggerSettings(cursor_poll_interval_s=0.2, unwatched_flush_interval_s=0.2)
    # past the read that comes a poll interval after a stream opened
    during = _counted_while_unwatched(metered[0], tmp_path, settings, reads, settle_s=0.5)
    # Every 0.2 s would be 15 reads; every 10 s (the default) is at most one.
    assert during <= 1, during


def test_a_caller_with_a_full_message_buffered_wakes_a_sender_waiting_the_long_interval(
    metered: tuple[BackendProcess, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sender no longer reads the buffer each short interval while nobody watches: the caller's memory stays
    # bounded because the point that fills a message wakes it.
    monkeypatch.setattr(loop, "IDLE_WAKE_S", 60.0)
    backend, _ = metered
    job_id, token = backend.create_job()
    settings = LoggerSettings(
        unwatched_flush_interval_s=60.0,
        max_batch_points=200,
        cursor_poll_interval_s=0.05,
        unwatched_cursor_poll_interval_s=0.05,
    )
    with _warm_logger(backend, job_id, token, tmp_path, settings) as logger:
        sender = logger._sender
        assert sender is not None
        wait_until(lambda: sender._delivery.unwatched, 10, "the cursor says nobody watches")
        # Due a minute after the warm-up's flush: only the caller's wake-up can make the sender read them sooner. (The
        # first point may wake an idle sender, which then waits for a full message more.)
        for step in range(2 * settings.max_batch_points):
            logger.log_metric("train/batch_loss", 0.5, step=step)
        wait_until(
            lambda: logger.stats.committed_metrics >= 1 + settings.max_batch_points, 10, "a full message committed"
        )
        assert sender.wake_at_length == settings.max_batch_points, "what is left waits the long interval"
