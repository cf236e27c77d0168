"""Telemetry messages for tests."""

from __future__ import annotations

from collections.abc import Iterator

from trainingplatform.telemetry.v1 import telemetry_pb2


def metric_messages(
    job_id: str, first: int, last: int, batch: int = 1000
) -> Iterator[telemetry_pb2.StreamMetricsRequest]:
    """StreamMetrics messages carrying sequences first..last in batches."""
    sequence = first
    while sequence <= last:
        request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        for seq in range(sequence, min(sequence + batch, last + 1)):
            request.points.add(
                key="train/loss", value=1.0 / seq, step=seq, epoch=seq // 10_000, wall_time=1.7e9 + seq, sequence=seq
            )
        sequence += batch
        yield request
