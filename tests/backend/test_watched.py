"""GetStreamCursor's `unwatched`: whether anyone follows a job live, known in the process that holds the subscription
and, on PostgreSQL, in every other backend process (announced over LISTEN/NOTIFY), and forgotten when it ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth, postgres_database
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.subscriptions import WATCH_TTL_S


def _unwatched(backend: BackendProcess, job_id: str, token: str) -> Callable[[], bool]:
    def read() -> bool:
        response = backend.telemetry().GetStreamCursor(
            telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=auth(token), timeout=10
        )
        return response.unwatched

    return read


def _subscribe(backend: BackendProcess, job_id: str, token: str) -> grpc.Future:
    """An open SubscribeTelemetry call, registered once its first event (the job's creation) arrived."""
    call = backend.jobs().SubscribeTelemetry(jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token))
    next(call)
    return call


def test_the_cursor_says_whether_anyone_watches_the_job(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    other_id, other_token = backend.create_job()
    unwatched = _unwatched(backend, job_id, token)
    assert unwatched()
    call = _subscribe(backend, job_id, token)
    try:
        assert not unwatched()
        assert _unwatched(backend, other_id, other_token)(), "a subscription watches its own job only"
    finally:
        call.cancel()
    wait_until(unwatched, 10, "the ended subscription forgotten", interval=0.1)


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[BackendProcess, BackendProcess]]:
    """Two backend processes on one PostgreSQL database, as replicas or `--workers` are."""
    with postgres_database() as url:
        first = BackendProcess(url, tmp_path / "first")
        first.start()
        second = BackendProcess(url, tmp_path / "second")
        try:
            second.start()
            yield first, second
        finally:
            second.close()
            first.close()


def test_a_subscriber_on_another_process_is_known_and_then_forgotten(
    two_processes: tuple[BackendProcess, BackendProcess],
) -> None:
    first, second = two_processes
    job_id, token = first.create_job()
    unwatched_on_first = _unwatched(first, job_id, token)
    assert unwatched_on_first()
    call = _subscribe(second, job_id, token)
    try:
        # The trainer's stream may land on the first process: it must tell the trainer to stay quick.
        wait_until(
            lambda: not unwatched_on_first(), 10, "the first process to hear of the second's subscriber", interval=0.1
        )
        assert not _unwatched(second, job_id, token)()
    finally:
        call.cancel()
    wait_until(unwatched_on_first, WATCH_TTL_S + 10, "the first process to forget the ended subscription", interval=0.1)


def test_the_hub_holds_another_process_word_for_the_ttl_and_asks_to_announce_a_new_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trainingplatform_backend import subscriptions

    clock = [1000.0]
    monkeypatch.setattr(subscriptions.time, "monotonic", lambda: clock[0])
    hub = subscriptions.Hub(capacity_points=10)
    newly_watched: list[bool] = []
    hub.on_newly_watched = lambda: newly_watched.append(True)
    assert not hub.watched(7)
    subscriber = hub.subscribe(7)
    hub.subscribe(7)
    assert hub.watched(7) and hub.watched_here() == [7]
    assert newly_watched == [True], "announced once, on the job's first subscriber"
    hub.unsubscribe(7, subscriber)
    assert hub.watched(7), "one subscriber is left"
    hub.watched_elsewhere([8])
    assert hub.watched(8) and hub.watched_here() == [7]
    clock[0] += WATCH_TTL_S - 0.1
    assert hub.watched(8)
    clock[0] += 0.2
    assert not hub.watched(8), "another process's word is forgotten after the TTL"
