"""Fan-in: many trainer streams at once against one backend (PostgreSQL), nothing lost or doubled, bounded memory.

`streams` TrainingLoggers (one job each, spread over a few producer processes, as trainers would be) each log
`rate` points/s for `seconds`, then close. Reported: the points/s committed over the whole run, points lost
(logged but not stored) and doubled (stored twice: impossible by the primary key, counted anyway), resends the
backend ignored, and the backend's peak resident memory (VmHWM). Where the machine's CPU went over the run, as a
share of all its cores' time: the producers (the loggers, their sender threads and gRPC), the backend, and
PostgreSQL (`fanin_cpu_share_*`); and the backend's CPU per committed point (`fanin_backend_cpu_us_per_point`),
what one backend core would hold with the trainers on other machines.

    .venv/bin/python bench/bench_fanin.py [--streams 100] [--rate 1000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import postgres_cpu_s, process_cpu_s
from sqlalchemy import create_engine, text
from support.backend import BackendProcess, postgres_database

PRODUCERS = 4
TICK_S = 0.01


def _produce(address: str, jobs: list[tuple[str, str]], rate: int, seconds: float, start_at: float, results) -> None:
    """One producer process: a logger per job, `rate` points/s each, then close and report what was logged."""
    from trainingplatform_sdk import TrainingLogger

    with tempfile.TemporaryDirectory() as spool_root:
        loggers = [
            TrainingLogger(job_id, backend_address=address, token=token, spool_dir=f"{spool_root}/{i}")
            for i, (job_id, token) in enumerate(jobs)
        ]
        per_tick = max(1, int(rate * TICK_S))
        ticks = int(seconds / TICK_S)
        time.sleep(max(0.0, start_at - time.time()))
        before = os.times()
        next_tick = time.perf_counter()
        for step in range(ticks):
            for logger in loggers:
                for _ in range(per_tick):
                    logger.log_metric("train/batch_loss", 0.5, step=step)
            next_tick += TICK_S
            time.sleep(max(0.0, next_tick - time.perf_counter()))
        reports = [logger.close(120) for logger in loggers]
        after = os.times()
    counts = [(job, report.logged_metrics, report.dropped) for (job, _), report in zip(jobs, reports, strict=True)]
    results.put((counts, after.user + after.system - before.user - before.system))


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(streams: int = 100, rate: int = 1000, seconds: float = 30.0) -> dict[str, float]:
    """The fan-in numbers for `streams` concurrent streams of `rate` points/s for `seconds`."""
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(url, Path(tmp) / "data")
        backend.start()
        try:
            jobs = [backend.create_job() for _ in range(streams)]
            context = multiprocessing.get_context("spawn")
            results = context.Queue()
            start_at = time.time() + 5  # every producer has its loggers ready by then
            backend_cpu, postgres_cpu = process_cpu_s(backend.process.pid), postgres_cpu_s()  # type: ignore[union-attr]
            shares = [jobs[i::PRODUCERS] for i in range(PRODUCERS)]
            producers = [
                context.Process(target=_produce, args=(backend.address, share, rate, seconds, start_at, results))
                for share in shares
                if share
            ]
            for producer in producers:
                producer.start()
            logged: dict[str, int] = {}
            dropped = 0
            producers_cpu = 0.0
            for _ in producers:
                counts, cpu = results.get(timeout=seconds + 300)
                producers_cpu += cpu
                for job_id, count, lost in counts:
                    logged[job_id] = count
                    dropped += lost
            elapsed = time.time() - start_at
            backend_cpu = process_cpu_s(backend.process.pid) - backend_cpu  # type: ignore[union-attr]
            postgres_cpu = postgres_cpu_s() - postgres_cpu
            for producer in producers:
                producer.join(30)
            peak_rss = _peak_rss_mib(backend.process.pid)  # type: ignore[union-attr]
            engine = create_engine(url)
            with engine.connect() as conn:
                rows = dict(
                    conn.execute(
                        text(
                            "SELECT j.job_id, count(m.sequence) FROM jobs j LEFT JOIN metrics m ON m.job_pk = j.id "
                            "GROUP BY j.job_id"
                        )
                    ).all()
                )
                distinct = conn.execute(
                    text("SELECT count(*) FROM (SELECT DISTINCT job_pk, sequence FROM metrics) d")
                ).scalar_one()
                resends = conn.execute(
                    text("SELECT coalesce(sum(duplicate_count), 0) FROM ingest_cursors")
                ).scalar_one()
            engine.dispose()
        finally:
            backend.close()
    stored = sum(rows.values())
    cores = os.cpu_count() or 1
    return {
        "fanin_streams": float(streams),
        "fanin_points_per_s": stored / elapsed,
        "fanin_lost": float(sum(max(0, logged[j] - rows.get(j, 0)) for j in logged) + dropped),
        "fanin_duplicates": float(stored - distinct),
        "fanin_resends_ignored": float(resends),
        "fanin_backend_peak_rss_mib": peak_rss,
        "fanin_backend_cpu_us_per_point": backend_cpu / stored * 1e6,
        "fanin_cpu_share_producers": producers_cpu / (elapsed * cores),
        "fanin_cpu_share_backend": backend_cpu / (elapsed * cores),
        "fanin_cpu_share_postgres": postgres_cpu / (elapsed * cores),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(json.dumps(run(args.streams, args.rate, args.seconds), indent=2))


if __name__ == "__main__":
    main()
