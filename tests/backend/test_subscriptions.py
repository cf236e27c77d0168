"""SubscribeTelemetry: replay then live, resuming from a cursor, slow subscribers, several backend processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess, auth
from support.streams import metric_messages
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.spec.limits import MAX_EPOCH, MAX_SEQUENCE


class Collector(threading.Thread):
    """Reads a subscription on its own thread and keeps everything it received."""

    def __init__(
        self,
        backend: BackendProcess,
        job_id: str,
        token: str,
        *,
        after=None,
        delay: float = 0.0,
        keep_following: bool = False,
        jobs_stub=None,
    ) -> None:
        super().__init__(daemon=True)
        self.call = (jobs_stub or backend.jobs()).SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, after=after, keep_following=keep_following),
            metadata=auth(token),
            timeout=120,
        )
        self.delay = delay
        self.metric_sequences: list[int] = []
        self.log_sequences: list[int] = []
        self.statuses: list[int] = []
        self.summaries: list[int] = []
        self.lagged = 0
        self.order: list[str] = []
        self.last_cursor = jobs_pb2.TelemetryCursor()
        self.error: Exception | None = None
        self.first_event = threading.Event()

    def run(self) -> None:
        try:
            for event in self.call:
                kind = event.WhichOneof("event")
                self.order.append(kind)
                if kind == "metrics":
                    self.metric_sequences += [p.sequence for p in event.metrics.points]
                elif kind == "logs":
                    self.log_sequences += [r.sequence for r in event.logs.records]
                elif kind == "status_event":
                    self.statuses.append(event.status_event.to_status)
                elif kind == "epoch_summary":
                    self.summaries.append(event.epoch_summary.epoch)
                elif kind == "lagged":
                    self.lagged += 1
                self.last_cursor = event.cursor
                self.first_event.set()
                if self.delay:
                    time.sleep(self.delay)
        except Exception as error:
            self.error = error


def stream(backend: BackendProcess, job_id: str, token: str, first: int, last: int, batch: int = 1000):
    response = backend.telemetry().StreamMetrics(metric_messages(job_id, first, last, batch), metadata=auth(token))
    # The server ends a call early, with OK and what it committed, when the job gets its first live subscriber (the
    # contract's words); these tests stream only once every backend process knows of the subscriber.
    assert response.last_committed_sequence >= last, f"the call committed up to {response.last_committed_sequence}"
    return response


def wait_watched(backend: BackendProcess, job_id: str, token: str) -> None:
    """Waits until `backend` knows that the job has a live subscriber (on PostgreSQL another backend process hears
    of it over LISTEN/NOTIFY, within about WATCH_ANNOUNCE_S): until then, a stream it holds may be ended early."""

    def watched() -> bool:
        request = telemetry_pb2.GetStreamCursorRequest(job_id=job_id)
        return not backend.telemetry().GetStreamCursor(request, metadata=auth(token), timeout=10).unwatched

    wait_until(watched, 30, "the backend to hear of the job's subscriber", interval=0.05)


def set_status(backend: BackendProcess, job_id: str, token: str, status: int) -> None:
    backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=status), metadata=auth(token)
    )


def test_replay_then_live_until_the_terminal_status(backend):
    job_id, token = backend.create_job()
    stream(backend, job_id, token, 1, 3000)
    logs = telemetry_pb2.StreamLogsRequest(job_id=job_id)
    logs.records.add(level=common_pb2.LOG_LEVEL_INFO, message="Starting training", wall_time=1.0, sequence=1)
    backend.telemetry().StreamLogs(iter([logs]), metadata=auth(token))
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    collector = Collector(backend, job_id, backend.read_token)
    collector.start()
    assert collector.first_event.wait(30)
    stream(backend, job_id, token, 3001, 10_000)  # live, while subscribed
    backend.telemetry().RecordEpochSummary(
        telemetry_pb2.RecordEpochSummaryRequest(
            job_id=job_id, summary=telemetry_pb2.EpochSummary(epoch=0, metrics={"val/accuracy": 0.9})
        ),
        metadata=auth(token),
    )
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    collector.join(60)
    assert not collector.is_alive(), "the subscription must end by itself after the terminal status"
    assert collector.error is None
    assert collector.metric_sequences == list(range(1, 10_001))
    assert collector.log_sequences == [1]
    assert collector.summaries == [0]
    assert collector.statuses == [
        common_pb2.JOB_STATUS_PENDING,
        common_pb2.JOB_STATUS_RUNNING,
        common_pb2.JOB_STATUS_COMPLETED,
    ]
    assert collector.order[-1] == "status_event"  # the terminal status comes after everything before it
    # The replay tells a live job's state first (`tp watch` printed the first log lines before PENDING, RUNNING).
    assert collector.order[:2] == ["status_event", "status_event"], collector.order[:5]
    assert collector.last_cursor.metric_sequence == 10_000


def test_resume_from_a_cursor_gets_only_what_follows(backend):
    job_id, token = backend.create_job()
    stream(backend, job_id, token, 1, 2500)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    after = jobs_pb2.TelemetryCursor(metric_sequence=2000, status_sequence=2)
    collector = Collector(backend, job_id, token, after=after)
    collector.start()
    collector.join(30)
    assert collector.metric_sequences == list(range(2001, 2501))
    assert collector.statuses == [common_pb2.JOB_STATUS_COMPLETED]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_slow_subscriber_lags_without_slowing_ingest_or_losing_events(database_url: str, tmp_path: Path):
    backend = BackendProcess(database_url, tmp_path / "data", extra_env={"TP_SUBSCRIBER_BUFFER_POINTS": "2000"})
    backend.start()
    try:
        job_id, token = backend.create_job()
        set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        # A small, fixed HTTP/2 window (no BDP probing) so the slow reader pushes back on the server quickly.
        narrow = grpc.insecure_channel(backend.address, options=[("grpc.http2.bdp_probe", 0)])
        slow = Collector(backend, job_id, token, delay=0.05, jobs_stub=jobs_pb2_grpc.JobsServiceStub(narrow))
        fast = Collector(backend, job_id, token)
        slow.start()
        fast.start()
        assert slow.first_event.wait(30) and fast.first_event.wait(30)
        total = 60_000
        response = stream(backend, job_id, token, 1, total, batch=500)
        assert response.points_committed == total
        # Ingest finished while the slow subscriber was still far behind: it never waited for it.
        assert len(slow.metric_sequences) < total
        set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
        fast.join(60)
        slow.join(120)
        assert fast.metric_sequences == list(range(1, total + 1))
        assert slow.metric_sequences == list(range(1, total + 1))  # nothing skipped, nothing doubled
        assert slow.lagged >= 1
        assert slow.statuses[-1] == common_pb2.JOB_STATUS_COMPLETED
    finally:
        backend.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_subscriber_on_a_second_backend_sees_what_the_first_ingests(database_url: str, tmp_path: Path):
    first = BackendProcess(database_url, tmp_path / "first")
    first.start()
    second = BackendProcess(database_url, tmp_path / "second", extra_args=["--no-migrate"])
    second.internal_token = first.internal_token
    second.start()
    try:
        job_id, token = first.create_job()
        collector = Collector(second, job_id, token)
        collector.start()
        assert collector.first_event.wait(30)
        wait_watched(first, job_id, token)
        set_status(first, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        for start in range(1, 20_001, 5000):
            stream(first, job_id, token, start, start + 4999)
        set_status(first, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
        collector.join(60)
        assert collector.error is None
        assert collector.metric_sequences == list(range(1, 20_001))
        assert collector.statuses == [
            common_pb2.JOB_STATUS_PENDING,
            common_pb2.JOB_STATUS_RUNNING,
            common_pb2.JOB_STATUS_COMPLETED,
        ]
    finally:
        second.close()
        first.close()


def _collect(backend: BackendProcess, job_id: str, token: str, **kwargs) -> Collector:
    collector = Collector(backend, job_id, token, **kwargs)
    collector.start()
    return collector


@pytest.mark.parametrize(
    "terminal", [common_pb2.JOB_STATUS_COMPLETED, common_pb2.JOB_STATUS_FAILED, common_pb2.JOB_STATUS_CANCELLED]
)
def test_a_resubscription_to_an_ended_job_ends_whatever_the_cursor(module_backend, terminal):
    job_id, token = module_backend.create_job()
    stream(module_backend, job_id, token, 1, 1500)
    set_status(module_backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    set_status(module_backend, job_id, token, terminal)
    first = _collect(module_backend, job_id, token)
    first.join(30)
    assert not first.is_alive() and first.error is None
    assert first.metric_sequences == list(range(1, 1501))
    # Resuming from the last cursor (what the Python and Node clients do after an error): nothing lies after
    # it, and the stream must still end rather than run until the deadline.
    resumed = _collect(module_backend, job_id, token, after=first.last_cursor)
    resumed.join(30)
    assert not resumed.is_alive(), "a resubscription to an ended job must end"
    assert resumed.error is None
    assert resumed.metric_sequences == [] and resumed.statuses == []
    # Past the terminal status event, with telemetry left after the cursor: sent, then the end.
    after = jobs_pb2.TelemetryCursor(metric_sequence=1000, status_sequence=3)
    partial = _collect(module_backend, job_id, token, after=after)
    partial.join(30)
    assert not partial.is_alive() and partial.error is None
    assert partial.metric_sequences == list(range(1001, 1501))
    assert partial.statuses == []
    # A cursor beyond everything the job has (the largest positions a cursor may hold; beyond: INVALID_ARGUMENT).
    beyond = jobs_pb2.TelemetryCursor(
        metric_sequence=MAX_SEQUENCE,
        log_sequence=MAX_SEQUENCE,
        status_sequence=99,
        epoch_summary_sequence=MAX_EPOCH + 1,
    )
    far = _collect(module_backend, job_id, token, after=beyond)
    far.join(30)
    assert not far.is_alive() and far.error is None
    assert far.order == []
    # keep_following still keeps the stream open.
    following = _collect(module_backend, job_id, token, after=first.last_cursor, keep_following=True)
    following.join(2)
    assert following.is_alive()
    following.call.cancel()


def test_a_point_that_fills_a_hole_late_reaches_a_live_subscriber(backend):
    job_id, token = backend.create_job()
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    stream(backend, job_id, token, 1, 100)
    stream(backend, job_id, token, 151, 200)  # 101..150 are missing for now
    collector = _collect(backend, job_id, token)
    assert collector.first_event.wait(30)
    deadline = time.monotonic() + 30
    while len(collector.metric_sequences) < 150 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert collector.last_cursor.metric_sequence == 100  # the contiguous low-water mark, not 200
    stream(backend, job_id, token, 201, 300)  # live, from memory, above the hole
    stream(backend, job_id, token, 101, 150)  # fills the hole late
    stream(backend, job_id, token, 301, 400)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    collector.join(60)
    assert not collector.is_alive() and collector.error is None
    # Every stored point reached the subscriber exactly once (the late ones out of order, after the hole).
    assert sorted(collector.metric_sequences) == list(range(1, 401))
    assert len(collector.metric_sequences) == 400
    assert collector.last_cursor.metric_sequence == 400


def test_a_subscriber_resuming_below_a_hole_gets_the_points_that_filled_it(backend):
    job_id, token = backend.create_job()
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_RUNNING)
    stream(backend, job_id, token, 1, 10)
    stream(backend, job_id, token, 21, 30)
    first = _collect(backend, job_id, token)
    deadline = time.monotonic() + 30
    while len(first.metric_sequences) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.call.cancel()
    first.join(10)
    assert first.last_cursor.metric_sequence == 10
    stream(backend, job_id, token, 11, 20)  # the hole is filled while nobody follows
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
    resumed = _collect(backend, job_id, token, after=first.last_cursor)
    resumed.join(30)
    assert not resumed.is_alive() and resumed.error is None
    assert resumed.metric_sequences[:10] == list(range(11, 21))
    assert resumed.last_cursor.metric_sequence == 30


def _summary(backend: BackendProcess, job_id: str, token: str, epoch: int) -> None:
    backend.telemetry().RecordEpochSummary(
        telemetry_pb2.RecordEpochSummaryRequest(
            job_id=job_id, summary=telemetry_pb2.EpochSummary(epoch=epoch, metrics={"val/accuracy": 0.5})
        ),
        metadata=auth(token),
        timeout=10,
    )


def test_out_of_range_epochs_steps_and_sequences_are_refused_and_the_live_view_survives(backend):
    job_id, token = backend.create_job()
    _summary(backend, job_id, token, 0)
    with pytest.raises(grpc.RpcError) as refused:
        _summary(backend, job_id, token, 2**63 - 1)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "epoch" in refused.value.details() and "999999999" in refused.value.details().replace(",", "")
    for field, value in (("epoch", 10**9), ("step", 2**53), ("sequence", 2**53)):
        request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        point = request.points.add(key="train/loss", value=1.0, wall_time=1.0, sequence=1)
        setattr(point, field, value)
        with pytest.raises(grpc.RpcError) as refused:
            backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in refused.value.details(), refused.value.details()
        logs = telemetry_pb2.StreamLogsRequest(job_id=job_id)
        record = logs.records.add(level=common_pb2.LOG_LEVEL_INFO, message="x", wall_time=1.0, sequence=1)
        setattr(record, field, value)
        with pytest.raises(grpc.RpcError) as refused:
            backend.telemetry().StreamLogs(iter([logs]), metadata=auth(token), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
    # The largest accepted values are accepted, and the job's live view still works.
    _summary(backend, job_id, token, 999_999_999)
    request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    request.points.add(key="k", value=1.0, wall_time=1.0, sequence=1, step=2**53 - 1, epoch=999_999_999)
    backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token), timeout=10)
    set_status(backend, job_id, token, common_pb2.JOB_STATUS_CANCELLED)
    collector = _collect(backend, job_id, token)
    collector.join(30)
    assert not collector.is_alive() and collector.error is None
    assert collector.summaries == [0, 999_999_999]
    assert collector.metric_sequences == [1]


def test_replay_pages_are_read_and_built_off_the_event_loop(database_url: str, monkeypatch: pytest.MonkeyPatch):
    """In-process (a real database, the real servicer): every replay page is read from the database and turned into
    protobuf in a worker thread, so the loop keeps serving other calls while a large replay is built. Asserted on
    the thread that runs the conversion, not on timings."""
    import asyncio

    from trainingplatform_backend import convert
    from trainingplatform_backend.auth import CALLER, Kind, Principal
    from trainingplatform_backend.db import create_db_engine, migrate
    from trainingplatform_backend.ingest import Ingestor
    from trainingplatform_backend.jobs_service import JobsServicer
    from trainingplatform_backend.store import Store
    from trainingplatform_backend.subscriptions import Hub
    from trainingplatform_backend.telemetry_service import Backend

    migrate(database_url)
    engine = create_db_engine(database_url)
    try:
        store = Store(engine)
        view, _ = store.create_job(
            framework="timm",
            model_name="resnet10t",
            display_name="replay",
            model_config={},
            dataset_config={},
            training_config={},
            advanced_config={},
        )
        job_id = view.job.job_id
        job_pk = store.job_pk(job_id)
        ingestor = Ingestor(store)
        for request in metric_messages(job_id, 1, 12_000, 4000):
            ingestor.commit([ingestor.prepare_metrics(job_pk, request.points)])
        logs = telemetry_pb2.StreamLogsRequest(job_id=job_id)
        logs.records.add(level=common_pb2.LOG_LEVEL_INFO, message="hello", wall_time=1.0, sequence=1)
        ingestor.commit([ingestor.prepare_logs(job_pk, logs.records)])
        store.transition(job_id, "RUNNING")
        store.transition(job_id, "COMPLETED")

        built_on: list[int] = []
        for name in ("metric_points", "log_records"):
            original = getattr(convert, name)

            def recording(*args, _original=original, **kwargs):
                built_on.append(threading.get_ident())
                return _original(*args, **kwargs)

            monkeypatch.setattr(convert, name, recording)

        async def subscribe() -> tuple[int, list[int]]:
            CALLER.set(Principal(Kind.INTERNAL))
            servicer = JobsServicer(Backend(store, Hub(50_000)), dispatcher=None)  # type: ignore[arg-type]
            sequences: list[int] = []
            request = jobs_pb2.SubscribeTelemetryRequest(job_id=job_id)
            async for response in servicer.SubscribeTelemetry(request, None):  # type: ignore[arg-type]
                sequences += [p.sequence for p in response.metrics.points]
            return threading.get_ident(), sequences

        loop_thread, sequences = asyncio.run(asyncio.wait_for(subscribe(), 60))
        assert sequences == list(range(1, 12_001))
        assert built_on, "the replay did not build any page"
        assert loop_thread not in built_on, "a replay page was built on the event loop's thread"
    finally:
        engine.dispose()


def _logs(backend: BackendProcess, job_id: str, token: str, sequences: range) -> None:
    request = telemetry_pb2.StreamLogsRequest(job_id=job_id)
    for sequence in sequences:
        request.records.add(level=common_pb2.LOG_LEVEL_INFO, message=f"m{sequence}", wall_time=1.0, sequence=sequence)
    backend.telemetry().StreamLogs(iter([request]), metadata=auth(token), timeout=10)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_late_points_and_log_records_reach_a_subscriber_on_another_backend(database_url: str, tmp_path: Path):
    first = BackendProcess(database_url, tmp_path / "first")
    first.start()
    second = BackendProcess(database_url, tmp_path / "second", extra_args=["--no-migrate"])
    second.internal_token = first.internal_token
    second.start()
    try:
        job_id, token = first.create_job()
        set_status(first, job_id, token, common_pb2.JOB_STATUS_RUNNING)
        collector = _collect(second, job_id, token)
        assert collector.first_event.wait(30)
        wait_watched(first, job_id, token)
        stream(first, job_id, token, 1, 50)
        stream(first, job_id, token, 71, 100)
        _logs(first, job_id, token, range(1, 4))
        _logs(first, job_id, token, range(6, 8))
        deadline = time.monotonic() + 30
        while (
            len(collector.metric_sequences) < 80 or len(collector.log_sequences) < 5
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (collector.last_cursor.metric_sequence, collector.last_cursor.log_sequence) == (50, 3)
        stream(first, job_id, token, 51, 70)  # committed on the first backend: a notification for the second
        _logs(first, job_id, token, range(4, 6))
        set_status(first, job_id, token, common_pb2.JOB_STATUS_COMPLETED)
        collector.join(60)
        assert not collector.is_alive() and collector.error is None
        assert sorted(collector.metric_sequences) == list(range(1, 101)) and len(collector.metric_sequences) == 100
        assert collector.log_sequences == [1, 2, 3, 6, 7, 4, 5]
        assert (collector.last_cursor.metric_sequence, collector.last_cursor.log_sequence) == (100, 7)
    finally:
        second.close()
        first.close()


def test_stream_position_tracks_holes_and_reports_the_low_water_mark():
    from trainingplatform_backend.subscriptions import StreamPosition

    position = StreamPosition(0)
    position.advance([1, 2, 3])
    assert (position.low(), position.high, position.holes) == (3, 3, [])
    position.advance([6, 7, 10])
    assert (position.low(), position.high, position.holes) == (3, 10, [(4, 5), (8, 9)])
    position.fill([5, 8])
    assert (position.low(), position.holes) == (3, [(4, 4), (9, 9)])
    position.fill([4])
    assert (position.low(), position.holes) == (8, [(9, 9)])
    position.fill([9])
    assert (position.low(), position.holes) == (10, [])
    position = StreamPosition(100)
    position.advance([150])
    position.fill([101, 120, 149])
    assert position.holes == [(102, 119), (121, 148)] and position.low() == 101
