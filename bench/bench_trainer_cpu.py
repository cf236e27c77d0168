"""What a trainer costs the backend, watched or not: `trainers` TrainingLoggers on default settings, each logging 3
keys every 100 ms (a trainer at 10 steps/s), to a real backend on PostgreSQL, with the backend's CPU read from /proc
(all its threads) and every point read back from the database.

Nobody watching, a trainer sends a message a second (`unwatched_flush_interval_s`) and reads its cursor every
`unwatched_cursor_poll_interval_s` (10 s). Two more arms run in alternating rounds in the same process, so that all
share the machine's state of the moment: the same trainers with that read every second (the behaviour before the
backend ended a newly watched job's streams itself), and the same trainers each watched by a live subscriber (a
`SubscribeTelemetry` call per job, drained by a thread of this process): a message per step and a cursor read a
second, fanned out to the subscriber. `docs/capacity.md` prices a trainer from these numbers. They include the
backend's fixed costs (its group-commit rounds, housekeeping) shared by `trainers` only, so they are upper bounds
for a backend holding more.

    .venv/bin/python bench/bench_trainer_cpu.py [--trainers 40] [--seconds 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import process_cpu_s
from support.backend import BackendProcess, auth, postgres_database
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger

# One step of every trainer: 3 keys, every STEP_S.
KEYS = ("train/batch_loss", "train/lr", "train/throughput")
STEP_S = 0.1
# The arms: (settings, watched): nobody watching on default settings, the same with the cursor read every second
# as before, and watched.
ARMS = {
    "": (LoggerSettings(), False),
    "_1s_reads": (LoggerSettings(unwatched_cursor_poll_interval_s=1.0), False),
    "_watched": (LoggerSettings(), True),
}


def _watch(backend: BackendProcess, jobs: list[tuple[str, str]]) -> list[Any]:
    """A live subscription per job, each drained by a thread of its own until cancelled; returns the calls once every
    one is registered (its first event, the job's creation, arrived)."""
    calls = []
    for job_id, token in jobs:
        request = jobs_pb2.SubscribeTelemetryRequest(job_id=job_id, keep_following=True)
        call = backend.jobs().SubscribeTelemetry(request, metadata=auth(token))
        next(call)
        threading.Thread(target=_drain, args=(call,), daemon=True).start()
        calls.append(call)
    return calls


def _drain(call: Any) -> None:
    with contextlib.suppress(Exception):  # grpc.RpcError: cancelled at the end of the round
        collections.deque(call, 0)


def _round(
    backend: BackendProcess, root: Path, settings: LoggerSettings, watched: bool, trainers: int, seconds: float
) -> float:
    """One round of `trainers` new jobs; returns the backend's CPU per trainer-second, in milliseconds."""
    jobs = [backend.create_job() for _ in range(trainers)]
    subscriptions = _watch(backend, jobs) if watched else []
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
        for call in subscriptions:
            call.cancel()
    expected = 1 + step * len(KEYS)
    for (job_id, _), report in zip(jobs, reports, strict=True):
        stored = len(backend.metric_sequences(job_id))
        if report.committed_metrics != expected or stored != expected:
            raise RuntimeError(f"{job_id}: {stored} points stored, {report.committed_metrics} committed of {expected}")
    return cpu / (trainers * wall) * 1000


def run(trainers: int = 40, seconds: float = 15.0, rounds: int = 2) -> dict[str, float]:
    """The backend's CPU per trainer-second, in milliseconds: nobody watching with the default cursor reads and with
    a read every second, and watched (medians of `rounds` alternating rounds)."""
    results: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(url, Path(tmp) / "data")
        backend.start()
        try:
            for index in range(rounds):
                for arm, (settings, watched) in ARMS.items():
                    root = Path(tmp) / f"spool-{index}{arm}"
                    results[arm].append(_round(backend, root, settings, watched, trainers, seconds))
        finally:
            backend.close()
    out = {f"trainer_cpu_ms_backend_unwatched{arm}": statistics.median(values) for arm, values in results.items()}
    out["trainer_cpu_ms_backend_watched"] = out.pop("trainer_cpu_ms_backend_unwatched_watched")
    out["trainer_cpu_trainers"] = float(trainers)
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
