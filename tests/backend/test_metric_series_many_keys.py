"""GetMetricSeries on a job with very many distinct keys: an answer covers at most MAX_SERIES_KEYS (1,000) keys in
key order and names the next key to continue from, the backend's memory stays bounded for one call, the answer
stays within the message limit, and the pages together hold every key once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

MAX_SERIES_KEYS = 1000  # the backend's jobs_service.MAX_SERIES_KEYS, as documented in the proto
MANY_KEYS = 200_000
# The backend's peak RSS may grow by at most this much for one answer over 200,000 keys: before the limit one call
# took it from about 170 to 900 MiB (a list of every key's range, a statement with a parameter per key, every
# key's buckets), and then failed.
MAX_PEAK_GROWTH_MIB = 200


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of process `pid` in MiB (VmHWM of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def stream_keys(backend: BackendProcess, job_id: str, token: str, keys: list[str], steps: int = 1) -> None:
    """`steps` points (steps 0, 1, ...) of every key on one StreamMetrics call, waiting for their commit."""

    def messages() -> Iterator[telemetry_pb2.StreamMetricsRequest]:
        sequence = 0
        message = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        for step in range(steps):
            for index, key in enumerate(keys):
                sequence += 1
                message.points.add(key=key, value=float(index), step=step, wall_time=1.7e9, sequence=sequence)
                if len(message.points) == 5000:
                    yield message
                    message = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        if message.points:
            yield message

    response = backend.telemetry().StreamMetrics(messages(), metadata=auth(token), timeout=300)
    assert response.points_committed == len(keys) * steps


def series(backend: BackendProcess, job_id: str, token: str, **fields: object) -> jobs_pb2.GetMetricSeriesResponse:
    request = jobs_pb2.GetMetricSeriesRequest(job_id=job_id, **fields)  # type: ignore[arg-type]
    return backend.jobs().GetMetricSeries(request, metadata=auth(token), timeout=120)


@pytest.mark.slow
def test_200k_keys_get_the_first_1000_keys_with_bounded_memory(backend: BackendProcess):
    job_id, token = backend.create_job()
    keys = [f"class_{index:06d}/recall" for index in range(MANY_KEYS)]
    stream_keys(backend, job_id, token, keys)
    assert backend.process is not None
    before = peak_rss_mib(backend.process.pid)
    response = series(backend, job_id, backend.read_token)
    growth = peak_rss_mib(backend.process.pid) - before
    assert [s.key for s in response.series] == keys[:MAX_SERIES_KEYS]
    assert response.next_key == keys[MAX_SERIES_KEYS]
    assert response.ByteSize() <= 4 * 1024 * 1024
    assert growth < MAX_PEAK_GROWTH_MIB, f"one answer grew the backend's peak RSS by {growth:.0f} MiB"
    # The next page starts at next_key; the last page has none.
    following = series(backend, job_id, token, start_key=response.next_key)
    assert [s.key for s in following.series] == keys[MAX_SERIES_KEYS : 2 * MAX_SERIES_KEYS]
    last = series(backend, job_id, token, start_key=keys[-5])
    assert [s.key for s in last.series] == keys[-5:] and last.next_key == ""


def test_pages_hold_every_key_once_in_key_order_with_a_key_filter(backend: BackendProcess):
    job_id, token = backend.create_job()
    keys = [f"k{index:04d}/é" if index % 3 else f"K{index:04d}" for index in range(2500)]
    stream_keys(backend, job_id, token, keys, steps=3)
    seen: list[str] = []
    start = ""
    pages = 0
    while True:
        response = series(backend, job_id, token, start_key=start, max_points=10)
        assert len(response.series) <= MAX_SERIES_KEYS
        assert all(s.total_points == 3 for s in response.series)
        seen.extend(s.key for s in response.series)
        pages += 1
        if not response.next_key:
            break
        start = response.next_key
    assert pages == 3 and seen == sorted(keys)
    # With a key filter: only those keys, from start_key on.
    wanted = sorted(keys)[10:20]
    response = series(backend, job_id, token, keys=wanted, start_key=wanted[5])
    assert [s.key for s in response.series] == wanted[5:] and response.next_key == ""


def test_a_bad_start_key_is_invalid_argument(backend: BackendProcess):
    job_id, token = backend.create_job()
    with pytest.raises(grpc.RpcError) as raised:
        series(backend, job_id, token, start_key="bad\nkey")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start_key" in (raised.value.details() or "")
