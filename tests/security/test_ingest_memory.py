"""Concurrent large StreamMetrics messages cannot grow the backend's memory with the number of streams: a stream
parses a large message only once the process's ingest budget (TP_MAX_INGEST_BYTES_IN_FLIGHT, 16 MiB) lets it in,
and holds only the bytes it received while it waits. Before the budget, 16 streams of 6.5 MB messages took the
backend from about 95 MiB to 1.1 to 1.4 GiB (every stream's message parsed and turned into rows at once, about
10 times its size each); with it, to about 400 MiB. Nothing waits forever and nothing is lost: every point sent is
committed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from support.backend import BackendProcess, auth
from trainingplatform.telemetry.v1 import telemetry_pb2

STREAMS = 16
MESSAGES_PER_STREAM = 2
MESSAGE_BYTES = 6_500_000  # a large message under the default TP_MAX_MESSAGE_BYTES (8 MiB)
INGEST_BYTES_IN_FLIGHT = 16 * 1024 * 1024  # the default TP_MAX_INGEST_BYTES_IN_FLIGHT
MIB = 1024 * 1024
STREAM_METRICS = "/trainingplatform.telemetry.v1.TrainingTelemetryService/StreamMetrics"


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/<pid>/status (VmRSS, VmHWM: the peak RSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for process {pid}")


def large_messages(count: int) -> tuple[list[bytes], int]:
    """`count` serialized StreamMetricsRequest messages of just under MESSAGE_BYTES each, as the SDK sends them
    (columns), without a job id, numbered from 1 on; and the points in each."""
    now = time.time()
    per_message = 260_000  # about 25 bytes a point

    def message(first: int) -> telemetry_pb2.StreamMetricsRequest:
        sequences = range(first, first + per_message)
        return telemetry_pb2.StreamMetricsRequest(
            columns=telemetry_pb2.MetricColumns(
                keys=[f"train/metric_{index}" for index in range(8)],
                key_indexes=[sequence % 8 for sequence in sequences],
                values=[sequence * 0.001 for sequence in sequences],
                steps=list(sequences),
                epochs=[sequence // 100_000 for sequence in sequences],
                wall_times=[now + sequence * 0.001 for sequence in sequences],
                sequences=list(sequences),
            )
        )

    payloads = [message(1 + index * per_message).SerializeToString() for index in range(count)]
    assert all(MESSAGE_BYTES * 0.9 < len(payload) < MESSAGE_BYTES for payload in payloads), [len(p) for p in payloads]
    return payloads, per_message


async def stream_all(address: str, jobs: list[tuple[str, str]], payloads: list[bytes]) -> list[int]:
    """One StreamMetrics call per job, all at once, each on its own connection (a trainer each): a first message
    naming the job, then `payloads`. Returns each call's points_committed."""
    options = [("grpc.max_send_message_length", 8 * MIB)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in jobs]

    async def one(channel: grpc.aio.Channel, job_id: str, token: str) -> int:
        call = channel.stream_unary(
            STREAM_METRICS,
            request_serializer=None,  # the messages are bytes already
            response_deserializer=telemetry_pb2.StreamMetricsResponse.FromString,
        )

        async def requests() -> AsyncIterator[bytes]:
            yield telemetry_pb2.StreamMetricsRequest(job_id=job_id).SerializeToString()
            for payload in payloads:
                yield payload

        response = await call(requests(), metadata=auth(token), timeout=300)
        return response.points_committed

    try:
        return list(await asyncio.gather(*(one(channel, *job) for channel, job in zip(channels, jobs, strict=True))))
    finally:
        for channel in channels:
            await channel.close()


@pytest.fixture
def db_backend(tmp_path: Path, database_url: str) -> Iterator[BackendProcess]:
    process = BackendProcess(database_url, tmp_path / "data")
    process.start()
    try:
        yield process
    finally:
        process.close()


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # the deployment's database
def test_concurrent_large_messages_grow_memory_by_the_budget_not_by_the_streams(db_backend: BackendProcess) -> None:
    backend = db_backend
    assert backend.process is not None
    pid = backend.process.pid
    payloads, per_message = large_messages(MESSAGES_PER_STREAM)
    jobs = [backend.create_job() for _ in range(STREAMS)]
    # Warm up (the first stream's allocations), so the baseline is the steady state.
    warm_job, warm_token = backend.create_job()
    warm = telemetry_pb2.MetricPoint(key="warm-up", value=1.0, wall_time=time.time(), sequence=1)
    backend.telemetry().StreamMetrics(
        iter([telemetry_pb2.StreamMetricsRequest(job_id=warm_job, points=[warm])]),
        metadata=auth(warm_token),
        timeout=30,
    )
    before = status_mib(pid, "VmRSS")

    committed = asyncio.run(stream_all(backend.address, jobs, payloads))

    peak = status_mib(pid, "VmHWM")  # the highest RSS the process ever had: nothing between samples is missed
    sent = MESSAGES_PER_STREAM * per_message
    assert committed == [sent] * STREAMS
    for job_id, _ in jobs:
        cursor = backend.cursor_row(job_id)
        assert (cursor["last_sequence"], cursor["committed_count"], cursor["missing_count"]) == (sent, sent, 0)
    # What may stay in memory: every waiting stream's received message (counted twice: gRPC's buffers and Python's
    # copy of it overlap), and the messages the budget lets in, parsed, validated and committing (5 to 10 times
    # their size, counted 20 times for the allocator's slack). 16 streams of 6.5 MB: about 520 MiB; without the
    # budget the backend grew by 1,000 to 1,300 MiB.
    message_mib = max(len(payload) for payload in payloads) / MIB
    bound = STREAMS * 2 * message_mib + 20 * INGEST_BYTES_IN_FLIGHT / MIB
    assert peak - before < bound, f"RSS {before:.0f} MiB before, peak {peak:.0f} MiB: grew past {bound:.0f} MiB"
