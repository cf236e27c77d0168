"""Latency from a point leaving the producer to its receipt by a live subscriber, at a steady rate.

A producer streams points at a fixed rate over one StreamMetrics call (a message every 10 ms, each point stamped
with its send time); a subscriber on JobsService.SubscribeTelemetry records when each point arrives. Reported:
p50 and p99 in milliseconds, at 1,000 and 50,000 points/s, against a real `tp-backend` on SQLite.

    .venv/bin/python bench/bench_latency.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.backend import BackendProcess, auth
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2

TICK_S = 0.01


def measure(backend: BackendProcess, rate: int, seconds: float) -> tuple[float, float]:
    """(p50, p99) latency in ms of `rate` points/s for `seconds`."""
    job_id, token = backend.create_job()
    latencies: list[float] = []
    total = int(rate * seconds)
    started = threading.Event()

    def subscribe() -> None:
        call = backend.jobs().SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token)
        )
        received = 0
        for event in call:
            started.set()
            now = time.time()
            for point in event.metrics.points:
                latencies.append((now - point.wall_time) * 1000)
            received += len(event.metrics.points)
            if received >= total:
                call.cancel()
                return

    subscriber = threading.Thread(target=subscribe, daemon=True)
    subscriber.start()
    started.wait(10)  # the PENDING creation event arrives first

    def produce():
        per_tick = max(1, int(rate * TICK_S))
        sequence = 0
        next_tick = time.perf_counter()
        while sequence < total:
            request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
            now = time.time()
            for _ in range(min(per_tick, total - sequence)):
                sequence += 1
                request.points.add(key="train/batch_loss", value=0.5, step=sequence, wall_time=now, sequence=sequence)
            yield request
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.perf_counter()))

    backend.telemetry().StreamMetrics(produce(), metadata=auth(token))
    backend.telemetry().UpdateStatus(
        telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=common_pb2.JOB_STATUS_RUNNING), metadata=auth(token)
    )
    subscriber.join(60)
    ordered = sorted(latencies)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def run(seconds: float) -> dict[str, float]:
    """Both rates against one backend."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(f"sqlite:///{tmp}/latency.db", Path(tmp) / "data")
        backend.start()
        try:
            for rate, label in ((1_000, "1k"), (50_000, "50k")):
                p50, p99 = measure(backend, rate, seconds)
                results[f"latency_ms_p50_{label}"] = p50
                results[f"latency_ms_p99_{label}"] = p99
        finally:
            backend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(run(parser.parse_args().seconds), indent=2))


if __name__ == "__main__":
    main()
