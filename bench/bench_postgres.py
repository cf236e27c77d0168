"""What PostgreSQL itself absorbs on this machine, without the backend's CPU in front of it: the numbers behind
docs/capacity.md.

A fresh database gets the backend's schema (the migrations); the writes go to a copy of the `metrics` table
(`LIKE metrics INCLUDING ALL`: same columns, primary key and indexes, no foreign key to a job row).

- `postgres_rows_per_s_copy`: metric rows/s written with COPY in transactions of 5,000 rows from `connections`
  connections: the storage's ceiling, far above what the backend's CPU feeds it;
- `postgres_wal_bytes_per_point`: WAL written per stored point (pg_current_wal_lsn before and after);
- `postgres_commits_per_s_20_rows`: transactions/s, each inserting 20 rows and sending one NOTIFY as a small
  round of the backend's group commit does, from `connections` connections, synchronous_commit on (the default).

    .venv/bin/python bench/bench_postgres.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from sqlalchemy.engine import make_url
from support.backend import postgres_database
from trainingplatform_backend import db

ROWS_PER_COPY = 5000
ROWS_PER_SMALL_COMMIT = 20


def _dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _wal_lsn(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def _for_each_connection(dsn: str, connections: int, work) -> list[int]:
    """Runs `work(conn, index)` on `connections` threads, each with its own connection; returns their counts."""
    counts = [0] * connections

    def one(index: int) -> None:
        with psycopg.connect(dsn, autocommit=False) as conn:
            counts[index] = work(conn, index)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts


def run(seconds: float = 5.0, connections: int = 2) -> dict[str, float]:
    """PostgreSQL's ceilings for the platform's write shapes on this machine."""
    with postgres_database() as url:
        db.migrate(url)
        dsn = _dsn(url)
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("CREATE TABLE bench_metrics (LIKE metrics INCLUDING ALL)")
            wal_start = _wal_lsn(admin)

            def copy_rows(conn: psycopg.Connection, index: int) -> int:
                deadline, sequence, written = time.monotonic() + seconds, 0, 0
                while time.monotonic() < deadline:
                    with (
                        conn.cursor() as cur,
                        cur.copy(
                            "COPY bench_metrics (job_pk, sequence, key, value, step, epoch, wall_time) FROM STDIN"
                        ) as copy,
                    ):
                        for _ in range(ROWS_PER_COPY):
                            sequence += 1
                            copy.write_row((index + 1, sequence, "train/batch_loss", 0.5, sequence, 0, time.time()))
                    conn.commit()
                    written += ROWS_PER_COPY
                return written

            started = time.perf_counter()
            copied = sum(_for_each_connection(dsn, connections, copy_rows))
            copy_s = time.perf_counter() - started
            wal_bytes = _wal_lsn(admin) - wal_start

            def small_commits(conn: psycopg.Connection, index: int) -> int:
                deadline, sequence, commits = time.monotonic() + seconds, 10_000_000, 0
                with conn.cursor() as cur:
                    while time.monotonic() < deadline:
                        rows = []
                        for _ in range(ROWS_PER_SMALL_COMMIT):
                            sequence += 1
                            rows.append((100 + index, sequence, "train/batch_loss", 0.5, sequence, 0, time.time()))
                        cur.executemany(
                            "INSERT INTO bench_metrics (job_pk, sequence, key, value, step, epoch, wall_time) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            rows,
                        )
                        cur.execute("SELECT pg_notify('bench', %s)", (str(index),))
                        conn.commit()
                        commits += 1
                return commits

            started = time.perf_counter()
            commits = sum(_for_each_connection(dsn, connections * 2, small_commits))
            small_s = time.perf_counter() - started
    return {
        "postgres_rows_per_s_copy": copied / copy_s,
        "postgres_wal_bytes_per_point": wal_bytes / copied,
        "postgres_commits_per_s_20_rows": commits / small_s,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.connections), indent=2))
