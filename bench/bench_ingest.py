"""Ingest throughput: points per second persisted through one StreamMetrics call, SQLite and PostgreSQL, beside
the old design (one HTTP POST per metric, one row per request, same SQLite schema) measured in the same run.

The client prebuilds its messages (the SDK builds them on its own thread), streams them over one call on a real
channel to a real `tp-backend` process, and counts the time from the first message to the committed response.

    .venv/bin/python bench/bench_ingest.py [--points 1000000] [--batch 5000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import legacy_http
from support.backend import BackendProcess, auth, postgres_database
from trainingplatform.telemetry.v1 import telemetry_pb2


def build_messages(job_id: str, points: int, batch: int) -> list[telemetry_pb2.StreamMetricsRequest]:
    """Prebuilt StreamMetrics messages: realistic keys, steps and epochs."""
    keys = ["train/batch_loss", "train/lr", "train/grad_norm", "gpu/mem_gb"]
    messages = []
    sequence = 0
    now = time.time()
    while sequence < points:
        request = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
        for _ in range(min(batch, points - sequence)):
            sequence += 1
            request.points.add(
                key=keys[sequence % 4],
                value=1.0 / sequence,
                step=sequence // 4,
                epoch=sequence // 40_000,
                wall_time=now + sequence * 1e-4,
                sequence=sequence,
            )
        messages.append(request)
    return messages


def measure(database_url: str, points: int, batch: int) -> float:
    """Points per second of one stream into a fresh backend on `database_url`."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(database_url, Path(tmp) / "data")
        backend.start()
        try:
            job_id, token = backend.create_job()
            messages = build_messages(job_id, points, batch)
            start = time.perf_counter()
            response = backend.telemetry().StreamMetrics(iter(messages), metadata=auth(token), timeout=600)
            elapsed = time.perf_counter() - start
            if response.points_committed != points or len(backend.metric_sequences(job_id)) != points:
                raise RuntimeError(f"expected {points} rows, the backend committed {response.points_committed}")
            return points / elapsed
        finally:
            backend.close()


def run(points: int, batch: int, legacy_seconds: float = 3.0) -> dict[str, float]:
    """Both databases, in one run."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["ingest_sqlite_points_per_s"] = measure(f"sqlite:///{tmp}/bench.db", points, batch)
    with postgres_database() as url:
        results["ingest_postgres_points_per_s"] = measure(url, points, batch)
    with tempfile.TemporaryDirectory() as tmp:
        results["legacy_http_points_per_s"] = legacy_http.measure(Path(tmp) / "legacy.db", legacy_seconds)
    results["ingest_vs_legacy_ratio"] = results["ingest_sqlite_points_per_s"] / results["legacy_http_points_per_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--legacy-seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(json.dumps(run(args.points, args.batch, args.legacy_seconds), indent=2))


if __name__ == "__main__":
    main()
