"""Latency from `TrainingLogger.log_metric` to the point's receipt by a live subscriber, at a steady rate.

A producer calls `log_metric` at a fixed rate (a burst every 10 ms; each point carries the wall time of its
`log_metric` call); the SDK batches and streams them (flush interval 50 ms by default) to a real `tp-backend` on
SQLite, which commits each batch and pushes it to a subscriber on JobsService.SubscribeTelemetry. Reported: p50 and
p99 in milliseconds at 1,000 and 50,000 points/s. The SDK's flush interval is part of what is measured. The
backend's own part (a batch sent on the stream -> committed -> received by the subscriber) is measured too, at
50,000 points/s, as `commit_latency_ms_*`: an upper bound of "commit to subscriber".

    .venv/bin/python bench/bench_latency.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import TrainingLogger

TICK_S = 0.01


def _subscribe(address: str, token: str, job_id: str, total: int, ready, results) -> None:
    """The subscriber, in its own process as another service would be: latency of each point on receipt."""
    import grpc
    from trainingplatform.jobs.v1 import jobs_pb2_grpc

    latencies: list[float] = []
    with grpc.insecure_channel(address) as channel:
        call = jobs_pb2_grpc.JobsServiceStub(channel).SubscribeTelemetry(
            jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(token)
        )
        for event in call:
            ready.set()
            now = time.time()
            latencies.extend((now - point.wall_time) * 1000 for point in event.metrics.points)
            if len(latencies) >= total:
                call.cancel()
                break
    results.put(sorted(latencies))


def _stream_directly(backend: BackendProcess, job_id: str, token: str, rate: int, total: int) -> None:
    """Sends the points on one StreamMetrics call, a message per tick, each point stamped as it is sent: what a
    subscriber then measures is the backend's part (receive, commit, fan out), the SDK's batching left out."""

    def messages():
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

    backend.telemetry().StreamMetrics(messages(), metadata=auth(token), timeout=600)


def measure(backend: BackendProcess, rate: int, seconds: float, *, via_sdk: bool = True) -> tuple[float, float]:
    """(p50, p99) latency in ms of `rate` points/s for `seconds`: from log_metric (via_sdk) or from the moment a
    batch is sent on the stream (the backend's part alone) to the subscriber's receipt."""
    job_id, token = backend.create_job()
    total = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    subscriber = context.Process(target=_subscribe, args=(backend.address, token, job_id, total, ready, results))
    subscriber.start()
    ready.wait(60)  # the PENDING creation event arrives first
    if not via_sdk:
        _stream_directly(backend, job_id, token, rate, total)
        ordered = results.get(timeout=120)
        subscriber.join(30)
        return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]
    with tempfile.TemporaryDirectory() as spool:
        logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=spool)
        per_tick = max(1, int(rate * TICK_S))
        logged = 0
        next_tick = time.perf_counter()
        while logged < total:
            for _ in range(min(per_tick, total - logged)):
                logged += 1
                logger.log_metric("train/batch_loss", 0.5, step=logged)
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        logger.close(60)
    ordered = results.get(timeout=120)
    subscriber.join(30)
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
            p50, p99 = measure(backend, 50_000, seconds, via_sdk=False)
            results["commit_latency_ms_p50_50k"] = p50
            results["commit_latency_ms_p99_50k"] = p99
        finally:
            backend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    print(json.dumps(run(parser.parse_args().seconds), indent=2))


if __name__ == "__main__":
    main()
