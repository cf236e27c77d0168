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


def request_points(request: telemetry_pb2.StreamMetricsRequest) -> list[telemetry_pb2.MetricPoint]:
    """The points of a StreamMetrics message as MetricPoint messages, whether it carries them as `points` or as
    `columns` (decoded here by the contract's own words, independently of the SDK and the backend)."""
    columns = request.columns
    points = list(request.points)
    for i in range(len(columns.sequences)):
        point = telemetry_pb2.MetricPoint(
            key=columns.keys[columns.key_indexes[i]],
            value=columns.values[i],
            wall_time=columns.wall_times[i],
            sequence=columns.sequences[i],
        )
        if columns.steps and columns.steps[i] != -1:
            point.step = columns.steps[i]
        if columns.epochs and columns.epochs[i] != -1:
            point.epoch = columns.epochs[i]
        points.append(point)
    return points
