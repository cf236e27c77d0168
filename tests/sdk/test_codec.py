"""How spooled metric records become requests again: as they are on disk when they fit, cut to the server's limit
when not, and sent as columns when an earlier SDK spooled them as MetricPoint messages."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support.gc_churn import young_objects_seen
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings
from trainingplatform_sdk.telemetry.sender.codec import MetricCodec

BATCH = [
    (sequence, f"train/k{sequence % 3}", sequence / 3, sequence if sequence % 2 else None, None, 1.7e9 + sequence)
    for sequence in range(1, 3001)
]


def fields(points: list[telemetry_pb2.MetricPoint]) -> list[tuple]:
    return [(p.sequence, p.key, p.value, p.step if p.HasField("step") else None, None, p.wall_time) for p in points]


def test_a_record_that_fits_is_sent_as_it_is_on_disk() -> None:
    codec = MetricCodec("job-1", LoggerSettings())
    payload = codec.spool_payload(BATCH)
    data, last, count = codec.parse(payload, 0)
    assert data == codec.encode(BATCH) and (last, count) == (3000, 3000)
    request = telemetry_pb2.StreamMetricsRequest.FromString(data)
    assert request.job_id == "job-1" and fields(request_points(request)) == BATCH


def test_a_record_is_resent_from_the_point_after_the_last_sent_and_cut_to_a_smaller_server_limit() -> None:
    payload = MetricCodec("job-1", LoggerSettings()).spool_payload(BATCH)
    small = MetricCodec("job-1", LoggerSettings())
    small.apply_server_limit(8192)
    sent, received = 1000, []
    while sent < 3000:
        data, last, count = small.parse(payload, sent)
        assert len(data) <= small.max_bytes
        points = request_points(telemetry_pb2.StreamMetricsRequest.FromString(data))
        assert (points[0].sequence, points[-1].sequence, len(points)) == (sent + 1, last, count)
        received += points
        sent = last
    assert fields(received) == BATCH[1000:]


def test_a_record_spooled_as_point_messages_by_an_earlier_sdk_is_sent_as_columns() -> None:
    old = telemetry_pb2.StreamMetricsRequest()
    for sequence, key, value, step, epoch, wall_time in BATCH:
        old.points.add(key=key, value=value, step=step, epoch=epoch, wall_time=wall_time, sequence=sequence)
    codec = MetricCodec("job-1", LoggerSettings())
    data, last, count = codec.parse(old.SerializeToString(), 10)
    request = telemetry_pb2.StreamMetricsRequest.FromString(data)
    assert not request.points and request.HasField("columns")
    assert (last, count) == (3000, 2990) and fields(request_points(request)) == BATCH[10:]


def _bound(codec: MetricCodec, points: list) -> int:
    """What the contract of `take_batch` bounds: each point's overhead plus its text at 1 byte a character when ASCII,
    4 when not."""
    return sum(codec.point_overhead + len(p[1]) * (1 if p[1].isascii() else 4) for p in points)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=300), min_size=1, max_size=4),
    count=st.integers(min_value=0, max_value=400),
    max_points=st.integers(min_value=1, max_value=300),
    server_limit=st.sampled_from([0, 4096, 9000, 65536]),
)
def test_take_batch_takes_the_longest_prefix_under_both_limits(keys, count, max_points, server_limit) -> None:
    codec = MetricCodec("job-1", LoggerSettings(max_batch_points=max_points))
    codec.apply_server_limit(server_limit)
    points = [(sequence, keys[sequence % len(keys)], 0.5, None, None, 1.0) for sequence in range(1, count + 1)]
    batch, full = codec.take_batch(iter(points))
    assert batch == points[: len(batch)]
    assert len(batch) <= max_points
    assert len(batch) == 1 or _bound(codec, batch) <= codec.budget
    cut = len(batch) < len(points)
    assert full == (cut or len(batch) == max_points)
    if cut and len(batch) < max_points:  # the budget cut it: one more point would not have fit
        assert _bound(codec, points[: len(batch) + 1]) > codec.budget


def test_encoding_a_batch_allocates_no_tracked_object_per_point() -> None:
    # Such objects, alive mid-encoding, are promoted by the collector and set off full collections: 0.45 us a point
    # of GC in the peers' burst when the transpose made an iterator per point.
    codec = MetricCodec("job-1", LoggerSettings())
    seen = young_objects_seen(lambda: codec.encode(BATCH))
    assert sum(seen.values()) < len(BATCH) // 10, seen.most_common(5)
