"""Exactly-once ingest against a real backend process on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import threading
import time

import grpc
import pytest
from support.backend import auth
from support.streams import metric_messages, request_points
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2


def test_batches_commit_and_resends_count_as_duplicates(backend):
    job_id, token = backend.create_job()
    telemetry = backend.telemetry()
    first = telemetry.StreamMetrics(metric_messages(job_id, 1, 5000), metadata=auth(token))
    assert (first.points_committed, first.duplicates_ignored, first.last_committed_sequence) == (5000, 0, 5000)
    # A client that lost the response resends an overlapping range: the overlap is ignored, the rest stored.
    second = telemetry.StreamMetrics(metric_messages(job_id, 4001, 7000), metadata=auth(token))
    assert (second.points_committed, second.duplicates_ignored, second.last_committed_sequence) == (2000, 1000, 7000)
    assert backend.metric_sequences(job_id) == list(range(1, 7001))
    cursor = telemetry.GetStreamCursor(telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=auth(token))
    assert (cursor.last_metric_sequence, cursor.last_log_sequence) == (7000, 0)
    assert backend.cursor_row(job_id) == {
        "last_sequence": 7000,
        "committed_count": 7000,
        "duplicate_count": 1000,
        "missing_count": 0,
    }


def test_gaps_are_accepted_and_counted(backend):
    job_id, token = backend.create_job()
    request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    for seq in (1, 2, 3, 7, 8, 20):
        request.points.add(key="k", value=seq, wall_time=1.0, sequence=seq)
    response = backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token))
    assert (response.points_committed, response.missing_sequences, response.last_committed_sequence) == (6, 14, 20)
    # A late point inside the hole is still stored (never refused), not counted as a duplicate.
    late = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    late.points.add(key="k", value=5, wall_time=1.0, sequence=5)
    response = backend.telemetry().StreamMetrics(iter([late]), metadata=auth(token))
    assert (response.points_committed, response.duplicates_ignored, response.last_committed_sequence) == (1, 0, 20)
    assert backend.metric_sequences(job_id) == [1, 2, 3, 5, 7, 8, 20]


@pytest.mark.parametrize("form", ["points", "columns"])
@pytest.mark.parametrize("count", [1, 63, 64, 65, 203])
def test_every_row_of_a_batch_is_stored_exactly_once_whatever_its_size(module_backend, count, form):
    """Batches are inserted in statements of several rows (SQLite): sizes around and past one statement's rows keep
    every field of every row, and count exactly what a resend stored and what it found there already, whether the
    points came as messages or as columns."""
    job_id, token = module_backend.create_job()
    sent = {
        seq: (f"loss/{seq % 3}", seq / 7, seq if seq % 2 else None, seq // 5 if seq % 3 else None, 1.7e9 + seq / 3)
        for seq in range(1, 2 * count)
    }

    def request(sequences):
        message = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        for seq in sequences:
            key, value, step, epoch, wall_time = sent[seq]
            message.points.add(key=key, value=value, step=step, epoch=epoch, wall_time=wall_time, sequence=seq)
        if form == "columns":
            return as_columns(message)
        return message

    telemetry = module_backend.telemetry()
    odd = telemetry.StreamMetrics(iter([request(range(1, 2 * count, 2))]), metadata=auth(token))
    assert (odd.points_committed, odd.missing_sequences) == (count, count - 1)
    # Every sequence again: the even ones fill the holes below the cursor, the odd ones are already there.
    every = telemetry.StreamMetrics(iter([request(range(1, 2 * count))]), metadata=auth(token))
    assert (every.points_committed, every.duplicates_ignored, every.last_committed_sequence) == (
        count - 1,
        count,
        2 * count - 1,
    )
    assert module_backend.metric_rows(job_id) == [(seq, *fields) for seq, fields in sent.items()]


def as_columns(request: telemetry_pb2.StreamMetricsRequest) -> telemetry_pb2.StreamMetricsRequest:
    """The same request with its points as MetricColumns."""
    keys = sorted({p.key for p in request.points})
    columns = telemetry_pb2.MetricColumns(
        keys=keys,
        key_indexes=[keys.index(p.key) for p in request.points],
        values=[p.value for p in request.points],
        steps=[p.step if p.HasField("step") else -1 for p in request.points],
        epochs=[p.epoch if p.HasField("epoch") else -1 for p in request.points],
        wall_times=[p.wall_time for p in request.points],
        sequences=[p.sequence for p in request.points],
    )
    return telemetry_pb2.StreamMetricsRequest(job_id=request.job_id, columns=columns)


def test_points_sent_as_columns_are_stored_exactly_and_reach_a_live_subscriber_as_points(backend):
    job_id, token = backend.create_job()
    subscription = backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True),
        metadata=auth(backend.read_token),
        timeout=60,
    )
    events = iter(subscription)
    assert next(events).WhichOneof("event") == "status_event"  # live from here on
    columns = telemetry_pb2.MetricColumns(
        keys=["loss", "lr"],
        key_indexes=[0, 1, 0, 1],
        values=[math.nan, -0.0, 5e-324, 1.7976931348623157e308],
        steps=[-1, 0, 7, 2**53 - 1],
        epochs=[3, -1, -1, 0],
        wall_times=[1.7e9, 1.7e9 + 0.25, 1.7e9 + 0.5, 1.7e9 + 0.75],
        sequences=[1, 2, 3, 4],
    )
    request = telemetry_pb2.StreamMetricsRequest(job_id=job_id, columns=columns)
    response = backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token))
    assert (response.points_committed, response.last_committed_sequence) == (4, 4)
    sent = request_points(request)
    rows = backend.metric_rows(job_id)
    assert [row[:2] for row in rows] == [(p.sequence, p.key) for p in sent]
    values = [row[2] for row in rows]
    # SQLite keeps NaN as NULL (read back as NaN by every reader), PostgreSQL as NaN.
    assert values[0] is None or math.isnan(values[0])
    assert math.copysign(1, values[1]) == -1 and values[2:] == [5e-324, 1.7976931348623157e308]
    steps_epochs_walls = [
        (None, 3, 1.7e9),
        (0, None, 1.7e9 + 0.25),
        (7, None, 1.7e9 + 0.5),
        (2**53 - 1, 0, 1.7e9 + 0.75),
    ]
    assert [row[3:] for row in rows] == steps_epochs_walls
    event = next(e for e in events if e.WhichOneof("event") == "metrics")
    subscription.cancel()
    # The same points, field presence and NaN bits included.
    assert [p.SerializeToString() for p in event.metrics.points] == [p.SerializeToString() for p in sent]


def test_nan_and_infinity_round_trip_exactly(backend):
    job_id, token = backend.create_job()
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, 0.1]
    request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    for seq, value in enumerate(values, start=1):
        request.points.add(key="loss", value=value, wall_time=1.0, sequence=seq)
    backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token))
    listed = backend.jobs().ListMetrics(jobs_pb2.ListMetricsRequest(job_id=job_id), metadata=auth(token))
    got = [p.value for p in listed.points]
    assert math.isnan(got[0])
    assert got[1:] == values[1:]
    # The summary path keeps them too.
    backend.telemetry().RecordEpochSummary(
        telemetry_pb2.RecordEpochSummaryRequest(
            job_id=job_id,
            summary=telemetry_pb2.EpochSummary(
                epoch=0, metrics={"loss": math.nan, "grad": math.inf}, duration_seconds=1.5
            ),
        ),
        metadata=auth(token),
    )
    events = backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True), metadata=auth(token)
    )
    for event in events:
        if event.HasField("epoch_summary"):
            assert math.isnan(event.epoch_summary.metrics["loss"])
            assert event.epoch_summary.metrics["grad"] == math.inf
            events.cancel()
            break


def test_exactly_once_across_kill_9_and_restart_during_a_stream(backend):
    """The client resends from the committed cursor after each crash: rows equal points sent, no duplicates."""
    job_id, token = backend.create_job()
    total = 60_000
    kills_at = {15, 45}  # message numbers (of 1000 points) after which the backend is killed
    telemetry = backend.telemetry()
    sent_messages = 0
    crashes = 0

    def stream_from(first: int):
        nonlocal sent_messages
        for message in metric_messages(job_id, first, total):
            sent_messages += 1
            if sent_messages in kills_at:
                backend.kill()  # SIGKILL while earlier messages may still be in flight or mid-commit
            yield message

    while True:
        cursor = None
        while cursor is None:
            try:
                cursor = telemetry.GetStreamCursor(
                    telemetry_pb2.GetStreamCursorRequest(job_id=job_id), metadata=auth(token), timeout=5
                ).last_metric_sequence
            except grpc.RpcError:
                backend.restart()
        if cursor == total:
            break
        try:
            telemetry.StreamMetrics(stream_from(cursor + 1), metadata=auth(token), timeout=60)
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
            crashes += 1
    assert crashes == 2
    assert backend.metric_sequences(job_id) == list(range(1, total + 1))


def test_graceful_shutdown_commits_everything_received(backend):
    job_id, token = backend.create_job()
    sent = threading.Event()
    release = threading.Event()

    def messages():
        yield from metric_messages(job_id, 1, 20_000)
        sent.set()
        release.wait(30)  # keep the stream open: the server must end it, not the client

    outcome: dict[str, object] = {}

    def call():
        try:
            outcome["response"] = backend.telemetry().StreamMetrics(messages(), metadata=auth(token), timeout=60)
        except grpc.RpcError as error:
            outcome["error"] = error

    caller = threading.Thread(target=call)
    caller.start()
    assert sent.wait(30)
    exit_code = backend.stop()
    release.set()
    caller.join(30)
    assert exit_code == 0
    assert outcome["error"].code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[union-attr]
    assert "GetStreamCursor" in outcome["error"].details()  # type: ignore[union-attr]
    # Everything the client had sent before the shutdown was read and committed.
    assert backend.metric_sequences(job_id) == list(range(1, 20_001))


def test_log_records_are_stored_with_truncation_of_long_text(backend):
    job_id, token = backend.create_job()
    request = telemetry_pb2.StreamLogsRequest(job_id=job_id)
    request.records.add(
        level=2,
        message="Starting training: resnet10t",
        wall_time=time.time(),
        sequence=1,
        source="trainer",
        rank=0,
        epoch=0,
    )
    request.records.add(level=4, message="x" * 100_000, wall_time=time.time(), sequence=2, source="trainer")
    request.records.add(level=3, message="nul\x00inside", wall_time=time.time(), sequence=3)
    response = backend.telemetry().StreamLogs(iter([request]), metadata=auth(token))
    assert response.records_committed == 3
    logs = backend.jobs().ListLogs(jobs_pb2.ListLogsRequest(job_id=job_id), metadata=auth(token)).records
    assert logs[0].message == "Starting training: resnet10t" and logs[0].epoch == 0 and logs[0].level == 2
    assert len(logs[1].message.encode()) <= 16 * 1024 and "[truncated" in logs[1].message
    assert logs[2].message == "nul\ufffdinside"
    warnings_up = backend.jobs().ListLogs(jobs_pb2.ListLogsRequest(job_id=job_id, min_level=3), metadata=auth(token))
    assert [r.sequence for r in warnings_up.records] == [2, 3]


@pytest.mark.parametrize("page_size", [1, 3, 1000])
def test_history_pages_cover_everything_once(module_backend, page_size):
    job_id, token = module_backend.create_job()
    request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    for seq in range(1, 11):
        request.points.add(key="a" if seq % 2 else "b", value=seq, wall_time=1.0, sequence=seq)
    module_backend.telemetry().StreamMetrics(iter([request]), metadata=auth(token))
    seen: list[int] = []
    token_ = ""
    while True:
        page = module_backend.jobs().ListMetrics(
            jobs_pb2.ListMetricsRequest(job_id=job_id, keys=["a"], page_size=page_size, page_token=token_),
            metadata=auth(token),
        )
        seen += [p.sequence for p in page.points]
        token_ = page.next_page_token
        if not token_:
            break
    assert seen == [1, 3, 5, 7, 9]
