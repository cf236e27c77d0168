"""GetStreamCursor's `unwatched`: whether anyone follows a job live, known in the process that holds the subscription
and, on PostgreSQL, in every other backend process (announced over LISTEN/NOTIFY), and forgotten when it ends. A job
that gets its first subscriber has its open telemetry streams ended with OK, in whichever process holds them, so a
trainer told `unwatched` reads the cursor at once instead of at its next (rare) cursor read."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth, metered_backend, postgres_database
from support.metrics import scrape
from support.streams import metric_messages
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


class _OpenStream:
    """A StreamMetrics call that sent its first point and waits to send more (as a trainer's stream does)."""

    def __init__(self, backend: BackendProcess, job_id: str, token: str) -> None:
        self._requests: queue.SimpleQueue[telemetry_pb2.StreamMetricsRequest | None] = queue.SimpleQueue()
        self._requests.put(next(metric_messages(job_id, 1, 1)))
        self.call = backend.telemetry().StreamMetrics.future(self._iterate(), metadata=auth(token))
        wait_until(lambda: backend.metric_sequences(job_id) == [1], 10, "the stream's first point committed")

    def _iterate(self) -> Iterator[telemetry_pb2.StreamMetricsRequest]:
        while (request := self._requests.get()) is not None:
            yield request

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()


def test_a_new_subscriber_ends_the_job_open_streams_with_their_totals_and_no_other_job(tmp_path: Path) -> None:
    with metered_backend(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data") as (backend, port):
        job_id, token = backend.create_job()
        other_id, other_token = backend.create_job()
        stream, other = _OpenStream(backend, job_id, token), _OpenStream(backend, other_id, other_token)
        try:
            call = _subscribe(backend, job_id, token)
            try:
                # The trainer learns of the subscriber from its stream's end, not from a cursor read.
                response = stream.call.result(timeout=10)
                assert (response.points_committed, response.last_committed_sequence) == (1, 1)
                assert not _unwatched(backend, job_id, token)()
                assert not other.call.done(), "another job's stream stays open"
                assert scrape(port).value("tp_backend_streams_ended_for_watch_total") == 1
                # A second subscriber of a job already watched ends nothing: its trainer already knows.
                again = _OpenStream(backend, job_id, token)
                second = _subscribe(backend, job_id, token)
                try:
                    with pytest.raises(grpc.FutureTimeoutError):
                        again.call.result(timeout=1)
                finally:
                    second.cancel()
                    again.close()
            finally:
                call.cancel()
        finally:
            stream.close()
            other.close()


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


def test_a_subscriber_on_another_process_ends_the_streams_this_process_holds(
    two_processes: tuple[BackendProcess, BackendProcess],
) -> None:
    first, second = two_processes
    job_id, token = first.create_job()
    stream = _OpenStream(first, job_id, token)
    try:
        call = _subscribe(second, job_id, token)
        try:
            assert stream.call.result(timeout=10).last_committed_sequence == 1
        finally:
            call.cancel()
    finally:
        stream.close()


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


def test_the_hub_reports_a_watch_that_starts_here_or_elsewhere_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainingplatform_backend import subscriptions

    clock = [1000.0]
    monkeypatch.setattr(subscriptions.time, "monotonic", lambda: clock[0])
    hub = subscriptions.Hub(capacity_points=10)
    started: list[int] = []
    hub.on_watch_started = started.append
    first = hub.subscribe(7)
    hub.subscribe(7)
    hub.watched_elsewhere([7, 8])
    hub.watched_elsewhere([8])
    assert started == [7, 8], "once per job: a second subscriber or a repeated word starts nothing"
    hub.subscribe(8)
    assert started == [7, 8], "a first subscriber here of a job watched elsewhere: its trainer already knows"
    hub.unsubscribe(7, first)
    clock[0] += WATCH_TTL_S + 1
    hub.watched_elsewhere([9])
    hub.watched_elsewhere([8])
    assert started == [7, 8, 9], "job 8 still has its subscriber here"
    hub.watched_elsewhere([10])
    clock[0] += WATCH_TTL_S + 1
    hub.watched_elsewhere([10])
    assert started == [7, 8, 9, 10, 10], "a word after the last one expired starts a new watch"
