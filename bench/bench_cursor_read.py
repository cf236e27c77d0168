"""What a trainer's cursor read costs the backend: `GetStreamCursor` calls at a steady rate over many jobs, against
a real backend on PostgreSQL, with the backend's CPU read from /proc (all its threads).

A trainer asks its committed cursor once a second while points are in flight (`cursor_poll_interval_s`), to forget
what the backend has committed and to hear whether someone watches the job; while nobody watches, every 10 s
(`unwatched_cursor_poll_interval_s`: the backend ends its streams when someone subscribes). `docs/capacity.md`
counts the read beside the message; `bench_trainer_cpu.py` measures a whole trainer.

The calls are futures from one client process (the shared loopback channel), spread over `jobs` jobs that each
have a committed point, so every read finds a cursor.

    .venv/bin/python bench/bench_cursor_read.py [--rate 500] [--jobs 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import grpc
from proc_cpu import process_cpu_s
from support.backend import BackendProcess, auth, postgres_database
from trainingplatform.telemetry.v1 import telemetry_pb2

# How often the client tops up the reads it has in flight.
TICK_S = 0.002


def run(rate: float = 500.0, jobs: int = 200, seconds: float = 10.0) -> dict[str, float]:
    """The backend's CPU per `GetStreamCursor` read, in milliseconds, at `rate` reads/s over `jobs` jobs."""
    with postgres_database() as url, tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(url, Path(tmp) / "data")
        backend.start()
        try:
            created = [backend.create_job() for _ in range(jobs)]
            stub = backend.telemetry()
            for job_id, token in created:  # one committed point each: the read finds a cursor
                response = stub.StreamMetrics(
                    iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[_point()])]),
                    metadata=auth(token),
                    timeout=30,
                )
                if response.last_committed_sequence != 1:
                    raise RuntimeError(f"the warm-up point of {job_id} was not committed: {response}")

            def read(index: int) -> grpc.Future:
                job_id, token = created[index % jobs]
                request = telemetry_pb2.GetStreamCursorRequest(job_id=job_id)
                return stub.GetStreamCursor.future(request, metadata=auth(token), timeout=30)

            for index in range(jobs):  # every job's key cached, as for a trainer reading once a second
                read(index).result()
            pid = backend.process.pid  # type: ignore[union-attr]
            cpu_before, started = process_cpu_s(pid), time.monotonic()
            sent = 0
            pending: list[grpc.Future] = []
            while (elapsed := time.monotonic() - started) < seconds:
                while sent < int(elapsed * rate):
                    pending.append(read(sent))
                    sent += 1
                pending = [future for future in pending if not future.done()]
                time.sleep(TICK_S)
            for future in pending:
                future.result()
            cpu = process_cpu_s(pid) - cpu_before
            wall = time.monotonic() - started
        finally:
            backend.close()
    return {
        "cursor_read_cpu_ms_backend": cpu / sent * 1000,
        "cursor_reads_per_s": sent / wall,
    }


def _point() -> telemetry_pb2.MetricPoint:
    return telemetry_pb2.MetricPoint(sequence=1, key="train/loss", value=0.5, wall_time=time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(run(args.rate, args.jobs, args.seconds), indent=2))


if __name__ == "__main__":
    main()
