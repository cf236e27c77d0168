"""Reconnect latency: from a restarted backend serving again to the first point the SDK gets committed there.

A TrainingLogger (default settings, but the 50 ms flush interval kept while nobody watches: what is measured is
the reconnect, not the slower sending of an unwatched job) logs a point every 10 ms from a thread, as a training
loop would, to a real `tp-backend` on SQLite. The backend is killed (SIGKILL), left down for a while (seeded, 0.5
to 3 s, so the SDK's backoff is caught at different phases), and started again on the same port and database;
`restarts` times.
Measured each time: from the moment the restarted backend's health check first answers SERVING to the moment the
database holds a point logged during the outage. Reported: p50 and p99 in milliseconds (a reconnect that beat
the health check counts as 0).

    .venv/bin/python bench/bench_reconnect.py [--restarts 10]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import create_engine, text
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger

LOG_INTERVAL_S = 0.01
POLL_S = 0.002


def _committed(engine, job_id: str) -> int:  # type: ignore[no-untyped-def]
    """The job's committed metric cursor, read from the database."""
    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT c.last_sequence FROM ingest_cursors c JOIN jobs j ON j.id = c.job_pk "
                "WHERE j.job_id = :j AND c.stream = 'metrics'"
            ),
            {"j": job_id},
        ).scalar()
    return int(value or 0)


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def run(restarts: int = 10, seed: int = 12) -> dict[str, float]:
    """p50 and p99 of the reconnect latency over `restarts` kill-and-start cycles of one backend."""
    rng = random.Random(seed)
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/reconnect.db"
        backend = BackendProcess(url, Path(tmp) / "data")
        backend.start()
        engine = create_engine(url)
        logger: TrainingLogger | None = None
        stop = threading.Event()
        logged = 0

        def produce() -> None:
            nonlocal logged
            while not stop.is_set():
                assert logger is not None
                logger.log_metric("train/loss", 0.5, step=logged)
                logged += 1
                stop.wait(LOG_INTERVAL_S)

        try:
            job_id, token = backend.create_job()
            logger = TrainingLogger(
                job_id,
                backend_address=backend.address,
                token=token,
                spool_dir=f"{tmp}/spool",
                settings=LoggerSettings(unwatched_flush_interval_s=LoggerSettings.flush_interval_s),
            )
            producer = threading.Thread(target=produce, name="bench-producer", daemon=True)
            producer.start()
            for _ in range(restarts):
                while _committed(engine, job_id) < 10:
                    time.sleep(POLL_S)
                backend.kill()
                before = _committed(engine, job_id)
                time.sleep(rng.uniform(0.5, 3.0))  # the outage (logging goes on)
                backend.start()
                serving = time.perf_counter()
                while _committed(engine, job_id) <= before:
                    time.sleep(POLL_S)
                latencies.append(max(0.0, (time.perf_counter() - serving) * 1000))
        finally:
            stop.set()
            if logger is not None:
                logger.close(30)
            engine.dispose()
            backend.close()
    ordered = sorted(latencies)
    return {"reconnect_ms_p50": statistics.median(ordered), "reconnect_ms_p99": _percentile(ordered, 0.99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(run(args.restarts), indent=2))


if __name__ == "__main__":
    main()
