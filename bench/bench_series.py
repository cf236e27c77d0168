"""Opening a long series: GetMetricSeries over gRPC on a job with 1,000,000 points of one key.

A real `tp-backend` on SQLite, then on PostgreSQL (127.0.0.1:5432, a database made for the run). The points are
written straight into the metrics table (SQLite: executemany; PostgreSQL: COPY) with the ingest cursor moved to
match, which is what ingest would have left, only faster. Measured: GetMetricSeries with `max_points=1000` for the
key (the chart of one metric), and with no key for a second job of the same size spread over 20 keys (every chart
of a job at once): the median wall time of `runs` calls from a Python client, in milliseconds.

    .venv/bin/python bench/bench_series.py [--points 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import create_engine, text
from support.backend import BackendProcess, auth, postgres_database
from trainingplatform.jobs.v1 import jobs_pb2

MAX_POINTS = 1000
KEYS = 20


def _rows(job_pk: int, points: int, keys: int) -> Iterator[tuple[int, int, str, float, int, int, float]]:
    """(job_pk, sequence, key, value, step, epoch, wall_time): `keys` keys logged at every step in turn."""
    for index in range(points):
        step = index // keys
        key = "train/loss" if keys == 1 else f"metric/{index % keys:02d}"
        yield job_pk, index + 1, key, 1.0 + math.sin(index / 5000.0), step, step // 10_000, 1.7e9 + index / 1000


def fill(url: str, job_id: str, points: int, keys: int = 1) -> None:
    """Writes the job's points and moves its metric cursor past them."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            job_pk = conn.execute(text("SELECT id FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if engine.dialect.name == "sqlite":
                cursor.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", _rows(job_pk, points, keys))
            else:
                columns = "job_pk, sequence, key, value, step, epoch, wall_time"
                with cursor.connection.cursor().copy(f"COPY metrics ({columns}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                    for row in _rows(job_pk, points, keys):
                        copy.write_row(row)
            raw.commit()
        finally:
            raw.close()
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE ingest_cursors SET last_sequence = :n, committed_count = :n "
                    "WHERE job_pk = :p AND stream = 'metrics'"
                ),
                {"n": points, "p": job_pk},
            )
            if engine.dialect.name != "sqlite":
                conn.execute(text("ANALYZE metrics"))
    finally:
        engine.dispose()


def _time_calls(backend: BackendProcess, job_id: str, keys: list[str], runs: int) -> tuple[float, int]:
    """Median milliseconds of `runs` GetMetricSeries calls (after one warm-up), and the buckets of the answer."""
    request = jobs_pb2.GetMetricSeriesRequest(job_id=job_id, keys=keys, max_points=MAX_POINTS)
    stub, metadata = backend.jobs(), auth(backend.internal_token)
    response = stub.GetMetricSeries(request, metadata=metadata, timeout=120)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        response = stub.GetMetricSeries(request, metadata=metadata, timeout=120)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), sum(len(s.buckets) for s in response.series)


@contextlib.contextmanager
def _database(name: str, tmp: str) -> Iterator[str]:
    if name == "sqlite":
        yield f"sqlite:///{tmp}/series.db"
    else:
        with postgres_database() as url:
            yield url


def run(points: int = 1_000_000, runs: int = 5) -> dict[str, float]:
    """Median GetMetricSeries milliseconds for `points` points of one key, and of 20 keys, on both databases."""
    results: dict[str, float] = {}
    for name in ("sqlite", "postgres"):
        with tempfile.TemporaryDirectory() as tmp, _database(name, tmp) as url:
            backend = BackendProcess(url, Path(tmp) / "data")
            backend.start()
            try:
                one_key, _ = backend.create_job()
                many_keys, _ = backend.create_job()
                fill(url, one_key, points, 1)
                fill(url, many_keys, points, KEYS)
                ms, buckets = _time_calls(backend, one_key, ["train/loss"], runs)
                assert buckets == min(MAX_POINTS, points), buckets
                results[f"series_{name}_ms_1key"] = round(ms, 1)
                ms, buckets = _time_calls(backend, many_keys, [], runs)
                assert buckets == KEYS * min(MAX_POINTS, points // KEYS), buckets
                results[f"series_{name}_ms_{KEYS}keys"] = round(ms, 1)
            finally:
                backend.close()
    results["series_points"] = points
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.points, args.runs), indent=2))


if __name__ == "__main__":
    main()
