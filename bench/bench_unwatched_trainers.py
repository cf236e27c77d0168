"""What a trainer nobody watches costs the backend: `trainers` TrainingLoggers on default settings, each logging 3
keys every 100 ms (a trainer at 10 steps/s), to a real backend on PostgreSQL, with the backend's CPU read from /proc
(all its threads) and every point read back from the database.

Nobody watching, a trainer sends a message a second (`unwatched_flush_interval_s`) and reads its cursor every
`unwatched_cursor_poll_interval_s` (10 s). The same trainers with that read every second (the behaviour before the
backend ended a newly watched job's streams itself) run in alternating rounds in the same process, so the two arms
share the machine's state of the moment: `docs/capacity.md` prices an unwatched trainer from these two numbers.

    .venv/bin/python bench/bench_unwatched_trainers.py [--trainers 40] [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import process_cpu_s
from support.backend import BackendProcess, postgres_database
from trainingplatform_sdk import LoggerSettings, TrainingLogger

# One step of every trainer: 3 keys, every STEP_S.
KEYS = ("train/batch_loss", "train/lr", "train/throughput")
STEP_S = 0.1
# The two arms: the default, and the cursor read every second as before.
ARMS = {"": LoggerSettings(), "_1s_reads": LoggerSettings(unwatched_cursor_poll_interval_s=1.0)}


def _round(backend: BackendProcess, root: Path, settings: LoggerSettings, trainers: int, seconds: float) -> float:
    """One round of `trainers` new jobs; returns the backend's CPU per trainer-second, in milliseconds."""
    jobs = [backend.create_job() for _ in range(trainers)]
    loggers = [
        TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=root / job_id, settings=settings)
        for job_id, token in jobs
    ]
    try:
        for logger in loggers:  # the streams open, and the cursor says unwatched, outside the measurement
            logger.log_metric("warm-up", 0.0)
        for logger in loggers:
            if not logger.flush(60):
                raise RuntimeError("a warm-up point was not delivered")
        pid = backend.process.pid  # type: ignore[union-attr]
        cpu_before, started = process_cpu_s(pid), time.monotonic()
        step = 0
        while time.monotonic() - started < seconds:
            for logger in loggers:
                for key in KEYS:
                    logger.log_metric(key, 0.5, step=step)
            step += 1
            time.sleep(max(0.0, started + step * STEP_S - time.monotonic()))
        cpu = process_cpu_s(pid) - cpu_before
        wall = time.monotonic() - started
    finally:
        reports = [logger.close(60) for logger in loggers]
    expected = 1 + step * len(KEYS)
    for (job_id, _), report in zip(jobs, reports, strict=True):
        stored = len(backend.metric_sequences(job_id))
        if report.committed_metrics != expected or stored != expected:
            raise RuntimeError(f"{job_id}: {stored} points stored, {report.committed_metrics} committed of {expected}")
    return cpu / (trainers * wall) * 1000


def run(trainers: int = 40, seconds: float = 15.0, rounds: int = 2) -> dict[str, float]:
    """The backend's CPU per unwatched trainer-second, in milliseconds, with the default cursor reads and with a
    read every second (medians of `rounds` alternating rounds)."""
    results: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(url, Path(tmp) / "data")
        backend.start()
        try:
            for index in range(rounds):
                for arm, settings in ARMS.items():
                    root = Path(tmp) / f"spool-{index}{arm}"
                    results[arm].append(_round(backend, root, settings, trainers, seconds))
        finally:
            backend.close()
    out = {f"unwatched_trainer_cpu_ms_backend{arm}": statistics.median(values) for arm, values in results.items()}
    out["unwatched_trainers"] = float(trainers)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainers", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(run(args.trainers, args.seconds, args.rounds), indent=2))


if __name__ == "__main__":
    main()
