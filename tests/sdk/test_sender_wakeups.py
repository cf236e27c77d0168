"""When the sender wakes and what each wake-up sends: flush deadlines, idle sleep, one wake-up for both streams,
large messages built straight to bytes, and the state saved without a write per message."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from reliability.polling import wait_until
from support.backend import BackendProcess
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.sender import loop
from trainingplatform_sdk.telemetry.sender import state as state_module
from trainingplatform_sdk.telemetry.sender.codec import LogCodec, MetricCodec
from trainingplatform_sdk.telemetry.sender.connection import OpenStream
from trainingplatform_sdk.telemetry.sender.loop import ACTIVE_INTERVALS, IDLE_WAKE_S, MIN_FLUSH_INTERVAL_S, Sender
from trainingplatform_sdk.telemetry.spool import Spool, read_state


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[Sender]:
    """A connected sender that is never started: its deadlines are computed, nothing is sent."""
    spool = Spool(tmp_path / "spool", "job", 1 << 30, 8 << 20)
    channel = grpc.insecure_channel("127.0.0.1:1")
    sender = Sender("job", deque(), channel, (), spool, LoggerSettings(), 0)
    sender._connection.established(0, 0)
    yield sender
    spool.close()
    channel.close()


def test_a_point_after_a_quiet_interval_is_due_at_once(sender: Sender) -> None:
    now = time.monotonic()
    sender._buffer.append((0, "loss", 1.0, None, None, 0.0))
    assert sender._next_wake(now) <= 0
    assert sender._due == now and sender.wake_at_length == 0


def test_a_point_right_after_a_flush_waits_at_most_one_interval(sender: Sender) -> None:
    interval = sender.settings.flush_interval_s
    now = time.monotonic()
    sender._flushed_at = now - interval / 4
    sender._buffer.append((0, "loss", 1.0, None, None, 0.0))
    delay = sender._next_wake(now)
    assert 0 < delay <= interval + 1e-9
    assert sender._due == pytest.approx(now + interval * 3 / 4)


def test_while_nobody_watches_a_partial_batch_waits_the_long_interval_unless_a_full_message_waits(
    sender: Sender,
) -> None:
    settings = sender.settings
    assert settings.unwatched_flush_interval_s > settings.flush_interval_s
    sender._delivery.unwatched = True
    now = time.monotonic()
    sender._flushed_at = now - 2 * settings.flush_interval_s
    sender._active_until = now + ACTIVE_INTERVALS * settings.flush_interval_s  # points come at every step
    sender._buffer.append((0, "loss", 1.0, None, None, 0.0))
    delay = sender._next_wake(now)
    assert sender._due == pytest.approx(sender._flushed_at + settings.unwatched_flush_interval_s)
    # Asleep until then, not each short interval: the caller wakes it once its buffer holds a full message.
    assert delay == pytest.approx(sender._due - now)
    assert sender.wake_at_length == settings.max_batch_points
    # Quiet for longer than the long interval: the point goes at once, as a watched one would.
    sender._due = None
    sender._flushed_at = now - 2 * settings.unwatched_flush_interval_s
    assert sender._next_wake(now) <= 0
    assert sender._due == now and sender.wake_at_length == 0
    # Everything sent and nothing logged for a while: idle, woken by the next point.
    sender._buffer.clear()
    sender._due = None
    sender._active_until = now - 1
    assert sender._next_wake(now) == pytest.approx(IDLE_WAKE_S)
    assert sender.wake_at_length == 1


def test_an_active_sender_looks_each_interval_and_a_quiet_one_sleeps_until_told(sender: Sender) -> None:
    interval = sender.settings.flush_interval_s
    now = time.monotonic()
    sender._active_until = now + ACTIVE_INTERVALS * interval
    assert sender._next_wake(now) == pytest.approx(interval)
    assert sender.wake_at_length == 0
    later = sender._active_until + interval
    assert sender._next_wake(later) == pytest.approx(IDLE_WAKE_S)
    assert sender.wake_at_length == 1


def test_points_coming_fast_shorten_the_interval_to_the_target_batch_and_a_slower_rate_restores_it(
    sender: Sender,
) -> None:
    settings = sender.settings
    interval, target = settings.flush_interval_s, settings.target_batch_points
    now = time.monotonic()
    sender._adapt_interval(now, 1)  # the first drain after a long quiet: nothing to go on
    assert sender._interval == interval
    # Four times the target per interval: a partial message every quarter interval.
    now += interval
    sender._adapt_interval(now, 4 * target)
    assert sender._interval == pytest.approx(interval / 4)
    sender._flushed_at = now
    sender._buffer.append((0, "loss", 1.0, None, None, 0.0))
    assert sender._next_wake(now) == pytest.approx(interval / 4)
    assert sender._due == pytest.approx(now + interval / 4)
    assert sender.wake_at_length == 0  # looking each short interval, the caller need not wake it
    # Far faster over the next interval: never below the floor.
    now += interval
    sender._adapt_interval(now, 1000 * target)
    assert sender._interval == MIN_FLUSH_INTERVAL_S
    # Below the target per interval: back to the configured interval.
    now += interval
    sender._adapt_interval(now, target // 2)
    assert sender._interval == interval


def test_a_burst_within_an_interval_does_not_shorten_it(sender: Sender) -> None:
    # An epoch's end: a few metrics, a summary and a log line drained in wake-ups a millisecond apart. Taken over
    # that millisecond their rate looks high; over the interval it is not, and the log line must not go sooner.
    settings = sender.settings
    interval, target = settings.flush_interval_s, settings.target_batch_points
    now = time.monotonic()
    sender._window_start = now
    for tick in range(1, 5):
        sender._adapt_interval(now + tick * 1e-3, 20)
        assert sender._interval == interval
    sender._adapt_interval(now + interval, target // 2)  # the window closes below the target
    assert sender._interval == interval


def test_a_short_interval_does_not_shorten_the_wait_while_nobody_watches(sender: Sender) -> None:
    settings = sender.settings
    now = time.monotonic()
    sender._window_start = now - 2 * settings.flush_interval_s
    sender._adapt_interval(now, 200 * settings.target_batch_points)
    assert sender._interval == MIN_FLUSH_INTERVAL_S
    sender._delivery.unwatched = True
    sender._flushed_at = now
    sender._set_due(now)
    assert sender._due == pytest.approx(now + settings.unwatched_flush_interval_s)


@pytest.mark.parametrize("interval", [0.005, 0.05, 0.1])
def test_a_sender_awake_each_interval_is_never_idle_whatever_the_rounding(tmp_path: Path, interval: float) -> None:
    # Asking to be woken would make the caller wake it at every point (an Event.set per point: 0.07 ms of the
    # caller's CPU per message in profile_sdk.py). `now + 0.005 - now` exceeds 0.005 in floating point, which once
    # made it ask.
    spool = Spool(tmp_path / "spool", "job", 1 << 30, 8 << 20)
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        sender = Sender("job", deque(), channel, (), spool, LoggerSettings(flush_interval_s=interval), 0)
        sender._connection.established(0, 0)
        now = time.monotonic()
        sender._active_until = now + 100
        for tick in range(1000):
            assert sender._next_wake(now + tick * 1e-3) == pytest.approx(interval)
            assert sender.wake_at_length == 0, tick
    finally:
        spool.close()
        channel.close()


def test_a_sender_whose_batch_cannot_go_is_still_woken_by_the_next_point(sender: Sender) -> None:
    # The backend away or the window full: a due batch waits. Sleeping past an interval, the sender must be wakeable
    # (the caller's next point wakes it); it once slept a whole second unwakeable, and a caller logging in a tight
    # loop filled 150,000 points into its buffer meanwhile.
    interval = sender.settings.flush_interval_s
    sender._delivery.can_send = lambda: False  # type: ignore[method-assign]
    now = time.monotonic()
    sender._due = now - interval
    sender._active_until = now - interval
    assert sender._next_wake(now) > interval
    assert sender.wake_at_length == 1
    sender._buffer.append((0, "loss", 1.0, None, None, 0.0))  # points waiting: taken within an interval
    assert sender._next_wake(now) <= interval + 1e-9
    assert sender.wake_at_length == 0


def test_while_nobody_watches_the_cursor_is_read_rarely_but_soon_after_a_stream_opens(sender: Sender) -> None:
    settings = sender.settings
    delivery = sender._delivery
    now = time.monotonic()
    delivery._last_poll = now
    sender._metrics.sent = 5  # points in flight: the cursor is read to release them
    assert delivery.next_poll() == pytest.approx(now + settings.cursor_poll_interval_s)
    delivery.unwatched = True
    assert delivery.next_poll() == pytest.approx(now + settings.unwatched_cursor_poll_interval_s)
    assert settings.unwatched_cursor_poll_interval_s > settings.cursor_poll_interval_s
    # The backend can end a stream for a new subscriber only once it knows of it: a read a short interval after a
    # stream opened catches a subscriber that came before.
    delivery._stream_opened()
    assert delivery.next_poll() == pytest.approx(time.monotonic() + settings.cursor_poll_interval_s, abs=0.05)
    delivery.unwatched = False
    delivery._last_poll = now
    delivery._stream_opened()
    assert delivery.next_poll() == pytest.approx(now + settings.cursor_poll_interval_s), "watched: nothing changes"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_idle_sender_is_woken_by_the_next_point(
    backend: BackendProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the point's wake-up the sender would sleep for a minute: only the caller can make it send.
    monkeypatch.setattr(loop, "IDLE_WAKE_S", 60.0)
    job_id, token = backend.create_job()
    settings = LoggerSettings(flush_interval_s=0.01, cursor_poll_interval_s=0.05)
    with TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=settings
    ) as logger:
        logger.log_metric("warm-up", 0.0)
        assert logger.flush(30)
        sender = logger._sender
        assert sender is not None
        wait_until(
            lambda: sender.wake_at_length == 1 and logger.stats.committed_metrics == 1,
            30,
            "the warm-up committed, the sender idle",
        )
        logger.log_metric("train/loss", 0.5, step=1)
        logger.log_message("one line")
        wait_until(
            lambda: logger.stats.committed_metrics == 2 and logger.stats.committed_logs == 1, 30, "both committed"
        )


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_and_logs_due_together_go_in_one_wake_up(
    backend: BackendProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iterations = [0]
    sends: list[tuple[int, int]] = []  # (iteration, message size)
    drain = Sender._drain
    send = OpenStream.send

    def counting_drain(self: Sender) -> int:
        iterations[0] += 1
        return drain(self)

    def recording_send(self: OpenStream, message: bytes) -> None:
        sends.append((iterations[0], len(message)))
        send(self, message)

    monkeypatch.setattr(Sender, "_drain", counting_drain)
    monkeypatch.setattr(OpenStream, "send", recording_send)
    job_id, token = backend.create_job()
    # A long interval: the metric and the record logged now are both due at the same deadline.
    settings = LoggerSettings(flush_interval_s=1.0)
    with TrainingLogger(
        job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=settings
    ) as logger:
        logger.log_metric("warm-up", 0.0)
        logger.log_message("warm-up")
        assert logger.flush(30)
        sends.clear()
        logger.log_metric("train/loss", 0.5, step=1)
        logger.log_message("epoch 1 done")
        wait_until(
            lambda: logger.stats.committed_metrics == 2 and logger.stats.committed_logs == 2, 30, "both committed"
        )
        assert len(sends) == 2
        assert sends[0][0] == sends[1][0], "the metric and the log record went in different wake-ups"


def test_a_large_batch_is_encoded_into_one_request_with_every_point() -> None:
    settings = LoggerSettings()
    metrics = MetricCodec("job-1", settings)
    batch = [(index + 1, f"k{index % 7}", index * 0.5, index, None, 1.5 + index) for index in range(1027)]
    request = telemetry_pb2.StreamMetricsRequest.FromString(metrics.encode(batch))
    assert request.job_id == "job-1"
    # As columns: each key once, no epoch column since no point has an epoch.
    assert not request.points and sorted(request.columns.keys) == [f"k{index}" for index in range(7)]
    assert not request.columns.epochs
    decoded = [(p.sequence, p.key, p.value, p.step, p.HasField("epoch"), p.wall_time) for p in request_points(request)]
    assert decoded == [(sequence, key, value, step, False, wall) for sequence, key, value, step, _, wall in batch]
    # Some points with a step or an epoch and some without: -1 stands for none in a column that is there.
    mixed = [(1, "a", 0.5, None, 0, 1.0), (2, "b", -0.0, 0, None, 2.0), (3, "a", math.nan, 2**53 - 1, 7, 3.0)]
    request = telemetry_pb2.StreamMetricsRequest.FromString(metrics.encode(mixed))
    assert list(request.columns.steps) == [-1, 0, 2**53 - 1] and list(request.columns.epochs) == [0, -1, 7]
    decoded = [(p.sequence, p.key, p.value, p.step if p.HasField("step") else None) for p in request_points(request)]
    assert decoded[:2] == [(1, "a", 0.5, None), (2, "b", -0.0, 0)] and math.copysign(1, decoded[1][2]) == -1
    assert decoded[2][0:2] == (3, "a") and math.isnan(decoded[2][2]) and decoded[2][3] == 2**53 - 1
    assert [p.epoch if p.HasField("epoch") else None for p in request_points(request)] == [0, None, 7]

    logs = LogCodec("job-1", settings, rank=3)
    records = [(index + 1, f"line {index}", 20, 0, index, 2.5) for index in range(257)]
    parsed = telemetry_pb2.StreamLogsRequest.FromString(logs.encode(records))
    assert [(r.sequence, r.message, r.rank) for r in parsed.records] == [(s, m, 3) for s, m, *_ in records]


def test_the_numbering_is_saved_within_the_interval_and_calls_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "job", 1 << 30, 8 << 20)
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        sender = Sender("job", deque(), channel, (), spool, LoggerSettings(), 0)
        saved = sender._state
        sender._metrics.assigned = 5
        saved.dirty = True
        saved.save_if_due()  # a new block: saved (durably) at once
        assert read_state(tmp_path)["metrics"]["reserved"] >= 5
        sender._metrics.assigned = 6
        sender._metrics.committed = 4
        saved.dirty = True
        saved.save_if_due()  # inside the block, just saved: waits
        assert read_state(tmp_path)["metrics"]["committed"] == 0
        saved.urgent = True
        saved.save_if_due()  # the calls changed: at once
        assert read_state(tmp_path)["metrics"]["committed"] == 4
        sender._metrics.committed = 6
        saved.dirty = True
        saved._saved_at -= state_module.SAVE_INTERVAL_S
        saved.save_if_due()  # the interval passed
        assert read_state(tmp_path)["metrics"]["committed"] == 6
    finally:
        spool.close()
        channel.close()
