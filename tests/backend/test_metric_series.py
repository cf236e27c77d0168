"""GetMetricSeries against a real backend on SQLite and PostgreSQL: long series bucketed on the server, spikes
never hidden, buckets that tile the steps, zoom, key filter, a cursor to continue live from, bad input, auth."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import grpc
import pytest
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

LOSS = "train/loss"
ACC = "val/accuracy"
POINTS = 100_000
SPIKE_STEP = 73_123
SPIKE = 1e6


def _loss(step: int) -> float:
    """A smooth curve with a little seeded-looking noise, in (0, 2)."""
    return 1.0 + 0.5 * math.sin(step / 997.0) + 0.01 * ((step * 7919) % 101) / 101


class _Job:
    """A job the test streams points into, keeping what it sent (key -> {sequence: (step, epoch, value)})."""

    def __init__(self, backend: BackendProcess) -> None:
        self.backend = backend
        self.job_id, self.token = backend.create_job()
        self.sequence = 0
        self.sent: dict[str, dict[int, tuple[int | None, int | None, float]]] = {}

    def stream(self, points: Sequence[tuple[str, int | None, int | None, float]], batch: int = 5000) -> None:
        """Streams (key, step, epoch, value) points on one StreamMetrics call and waits for its commit."""
        messages: list[telemetry_pb2.StreamMetricsRequest] = []
        for start in range(0, len(points), batch):
            message = telemetry_pb2.StreamMetricsRequest(job_id=self.job_id)
            for key, step, epoch, value in points[start : start + batch]:
                self.sequence += 1
                point = message.points.add(key=key, value=value, wall_time=1.7e9, sequence=self.sequence)
                if step is not None:
                    point.step = step
                if epoch is not None:
                    point.epoch = epoch
                self.sent.setdefault(key, {})[self.sequence] = (step, epoch, value)
            messages.append(message)
        response = self.backend.telemetry().StreamMetrics(iter(messages), metadata=auth(self.token), timeout=120)
        assert response.points_committed == len(points)

    def series(self, token: str | None = None, **fields: object) -> jobs_pb2.GetMetricSeriesResponse:
        request = jobs_pb2.GetMetricSeriesRequest(job_id=self.job_id, **fields)  # type: ignore[arg-type]
        return self.backend.jobs().GetMetricSeries(request, metadata=auth(token or self.token), timeout=60)


def _expected(
    sent: dict[int, tuple[int | None, int | None, float]], first: int, last: int
) -> tuple[float, float, float, int, int]:
    """(min, max, last, count, nan_count) of the sent points with a step in [first, last], NaN left out of min/max."""
    inside = [(seq, v) for seq, (step, _, v) in sent.items() if step is not None and first <= step <= last]
    numbers = [v for _, v in inside if not math.isnan(v)]
    last_value = max(inside)[1]
    low = min(numbers) if numbers else math.nan
    high = max(numbers) if numbers else math.nan
    return low, high, last_value, len(inside), len(inside) - len(numbers)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def _check_tiling(series: jobs_pb2.MetricSeries, sent: dict[int, tuple[int | None, int | None, float]]) -> None:
    """The buckets are in step order, never overlap, hold every point once and agree with what was sent."""
    buckets = list(series.buckets)
    steps = sorted({step for step, _, _ in sent.values() if step is not None})
    assert buckets[0].first_step == steps[0] and buckets[-1].last_step == steps[-1]
    for before, after in itertools.pairwise(buckets):
        assert before.first_step <= before.last_step < after.first_step
    assert sum(b.count for b in buckets) == series.total_points == sum(1 for s, _, _ in sent.values() if s is not None)
    for bucket in buckets:
        low, high, last, count, nans = _expected(sent, bucket.first_step, bucket.last_step)
        assert (bucket.count, bucket.nan_count) == (count, nans)
        assert _same(bucket.min, low) and _same(bucket.max, high) and _same(bucket.last, last), bucket


@pytest.fixture
def job(backend: BackendProcess) -> Iterator[_Job]:
    yield _Job(backend)


def test_a_single_spike_among_100k_points_shows_and_the_buckets_tile_the_steps(job: _Job):
    points = [(LOSS, step, step // 10_000, SPIKE if step == SPIKE_STEP else _loss(step)) for step in range(POINTS)]
    points += [(ACC, step, step // 10_000, step / POINTS) for step in range(0, POINTS, 1000)]
    job.stream(points)

    response = job.series(keys=[LOSS])  # max_points unset: 1000
    assert response.last_sequence == job.sequence
    (series,) = response.series
    assert series.key == LOSS and len(series.buckets) == 1000  # 100 steps each
    _check_tiling(series, job.sent[LOSS])
    (spiked,) = [b for b in series.buckets if b.max == SPIKE]
    assert spiked.first_step <= SPIKE_STEP <= spiked.last_step
    assert all(b.max < 2 for b in series.buckets if b is not spiked)
    assert series.buckets[0].first_epoch == 0 and series.buckets[-1].last_epoch == 9

    # Fewer buckets: still the spike, still a tiling.
    (coarse,) = job.series(keys=[LOSS], max_points=7).series
    assert len(coarse.buckets) == 7 and max(b.max for b in coarse.buckets) == SPIKE
    _check_tiling(coarse, job.sent[LOSS])


def test_zoom_keys_and_nan(job: _Job):
    points = [(LOSS, step, None, _loss(step)) for step in range(20_000)]
    points += [(ACC, step, 1, math.nan if step % 3000 == 0 else step / 10_000) for step in range(0, 20_000, 100)]
    points += [(ACC, None, 1, 0.5)]  # no step: in no bucket
    points += [("all/nan", step, None, math.nan) for step in range(5)]
    job.stream(points)

    # Zoom: 1000 steps at full resolution, one point per bucket, exact.
    (zoomed,) = job.series(keys=[LOSS], min_step=5000, max_step=5999).series
    assert [(b.first_step, b.last_step, b.count) for b in zoomed.buckets] == [(s, s, 1) for s in range(5000, 6000)]
    assert [b.last for b in zoomed.buckets] == [_loss(s) for s in range(5000, 6000)]
    assert all(b.min == b.max == b.last for b in zoomed.buckets)
    assert not zoomed.buckets[0].HasField("first_epoch")
    (left,) = job.series(keys=[LOSS], max_step=9).series
    assert [b.first_step for b in left.buckets] == list(range(10))
    (right,) = job.series(keys=[LOSS], min_step=19_990, max_points=2).series
    assert [(b.first_step, b.last_step, b.count) for b in right.buckets] == [(19_990, 19_994, 5), (19_995, 19_999, 5)]
    assert job.series(keys=[LOSS], min_step=20_000).series == []

    # Keys: every key (in key order) when none is named; only the named ones otherwise; an unknown key, nothing.
    everything = job.series(max_points=50)
    assert [s.key for s in everything.series] == ["all/nan", LOSS, ACC]
    for series in everything.series:
        assert len(series.buckets) <= 50
        _check_tiling(series, job.sent[series.key])
    assert [s.key for s in job.series(keys=[ACC, "no/such/key"]).series] == [ACC]
    assert job.series(keys=["no/such/key"]).series == []

    # NaN: counted, left out of min and max; a bucket of NaN only is NaN.
    acc = next(s for s in everything.series if s.key == ACC)
    assert sum(b.nan_count for b in acc.buckets) == 7 and acc.total_points == 200
    all_nan = everything.series[0]
    assert [(b.count, b.nan_count) for b in all_nan.buckets] == [(1, 1)] * 5
    assert all(math.isnan(b.min) and math.isnan(b.max) and math.isnan(b.last) for b in all_nan.buckets)


def test_a_key_with_few_points_gets_a_bucket_per_step_however_far_apart_its_steps(job: _Job):
    # "with fewer distinct steps than max_points, every point has a bucket of its own": steps 0 and 1 of an
    # evaluation logged at 0, 1, 2, 1000 and 3,000,000 shared one bucket of equal width (a chart lost points).
    steps = [0, 1, 2, 1000, 3_000_000]
    job.stream([(ACC, step, None, step / 10) for step in steps])
    job.stream([(LOSS, step, None, 1.0) for step in (5, 5, 6, 2_000_000)])  # two points at step 5
    for fields in ({"keys": [ACC]}, {}):  # one key, and several keys in one answer
        by_key = {s.key: s for s in job.series(max_points=10, **fields).series}  # type: ignore[arg-type]
        assert [(b.first_step, b.last_step, b.count, b.last) for b in by_key[ACC].buckets] == [
            (step, step, 1, step / 10) for step in steps
        ]
        _check_tiling(by_key[ACC], job.sent[ACC])
    (loss,) = job.series(keys=[LOSS], max_points=4).series
    buckets = [(b.first_step, b.last_step, b.count) for b in loss.buckets]
    assert buckets == [(5, 5, 2), (6, 6, 1), (2_000_000, 2_000_000, 1)]


def test_last_sequence_lets_a_subscriber_continue_without_a_gap(job: _Job):
    job.stream([(LOSS, step, 0, _loss(step)) for step in range(1000)])
    response = job.series(keys=[LOSS])
    assert response.last_sequence == 1000 and response.series[0].total_points == 1000
    job.stream([(LOSS, step, 0, _loss(step)) for step in range(1000, 1500)])

    after = jobs_pb2.TelemetryCursor(metric_sequence=response.last_sequence)
    stream = job.backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job.job_id, after=after, keep_following=True),
        metadata=auth(job.token),
        timeout=30,
    )
    received: list[telemetry_pb2.MetricPoint] = []
    for event in stream:
        received += event.metrics.points
        if len(received) >= 500:
            break
    stream.cancel()
    assert [p.sequence for p in received] == list(range(1001, 1501))
    assert [p.step for p in received] == list(range(1000, 1500))
    # Read again: the new points are in, the cursor moved with them.
    again = job.series(keys=[LOSS])
    assert again.last_sequence == 1500 and again.series[0].total_points == 1500


def test_an_empty_job_has_no_series(job: _Job):
    response = job.series()
    assert list(response.series) == [] and response.last_sequence == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"max_points": -1},
        {"max_points": 10_001},
        {"min_step": -1},
        {"max_step": 2**53},
        {"min_step": 10, "max_step": 9},
        {"keys": [""]},
        {"keys": ["x" * 251]},
        {"keys": ["bad\nkey"]},
        {"keys": [f"k{i}" for i in range(1001)]},
    ],
)
def test_bad_input_is_invalid_argument(module_backend: BackendProcess, fields: dict[str, object]):
    job_id, _ = module_backend.create_job()
    request = jobs_pb2.GetMetricSeriesRequest(job_id=job_id, **fields)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as raised:
        module_backend.jobs().GetMetricSeries(request, metadata=auth(module_backend.internal_token), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()


def test_bad_job_ids_and_tokens(job: _Job):
    jobs, backend = job.backend.jobs(), job.backend
    for job_id, code in (("", grpc.StatusCode.INVALID_ARGUMENT), ("no such job!", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.RpcError) as raised:
            jobs.GetMetricSeries(
                jobs_pb2.GetMetricSeriesRequest(job_id=job_id), metadata=auth(backend.internal_token), timeout=10
            )
        assert raised.value.code() == code
    with pytest.raises(grpc.RpcError) as raised:
        jobs.GetMetricSeries(
            jobs_pb2.GetMetricSeriesRequest(job_id="00000000-0000-0000-0000-000000000000"),
            metadata=auth(backend.internal_token),
            timeout=10,
        )
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    _, other_token = backend.create_job()
    with pytest.raises(grpc.RpcError) as raised:
        job.series(token=other_token)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert job.series(token=backend.read_token).last_sequence == 0


def test_many_keys_get_fewer_buckets_each_within_half_the_largest_message(job: _Job):
    keys = [f"layer{index:02d}/grad_norm" for index in range(50)]
    job.stream([(key, step, 0, float(step % 7)) for step in range(2000) for key in keys])
    response = job.series(max_points=10_000)
    assert [s.key for s in response.series] == keys
    sizes = {len(s.buckets) for s in response.series}
    assert len(sizes) == 1 and sizes.pop() < 2000  # the same resolution for every key, cut by bytes
    assert response.ByteSize() <= 4 * 1024 * 1024 - 4096
    for series in response.series:
        assert series.total_points == 2000 and max(b.max for b in series.buckets) == 6.0
    # One key alone gets its full resolution.
    (alone,) = job.series(keys=[keys[7]], max_points=10_000).series
    assert len(alone.buckets) == 2000


def test_more_keys_than_a_32_bit_group_number_holds_are_still_answered(job: _Job):
    # (key index) * 2**20 + bucket overflowed PostgreSQL's 32-bit integer from the 2,048th key: INTERNAL.
    keys = [f"class_{index:04d}/recall" for index in range(2100)]
    job.stream([(key, step, 0, float(index + step)) for step in range(3) for index, key in enumerate(keys)])
    # (An answer now covers at most 1,000 keys: the pages, following next_key, hold them all.)
    found: list[jobs_pb2.MetricSeries] = []
    response = job.series(max_points=10)
    found.extend(response.series)
    while response.next_key:
        response = job.series(max_points=10, start_key=response.next_key)
        found.extend(response.series)
    assert [s.key for s in found] == sorted(keys)
    last = {s.key: s for s in found}[keys[-1]]
    assert last.total_points == 3 and max(b.max for b in last.buckets) == 2099.0 + 2
