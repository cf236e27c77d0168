"""What one telemetry message costs in CPU, on each side: a TrainingLogger sending every point as its own message
(a point every 10 ms, a 5 ms flush interval, kept while nobody watches the job) to a real backend on SQLite.

This is the cost behind the training overhead: a trainer that logs a batch loss every step while someone watches
sends about one message per step, so the CPU per message, not per point, is what telemetry takes from training
(nobody watching, the SDK sends one message a second: `unwatched_flush_interval_s`). The backend's CPU is read
from /proc (all its threads); the SDK's is this process's CPU time (the sender thread, gRPC's threads and the loop
that logs, which mostly sleeps).

Then the other end of the scale, the backend's CPU per point when every message is full (`points_per_message`,
5,000 points: the SDK's largest batch): prebuilt messages on one StreamMetrics call, `4 * seconds` of them.

    .venv/bin/python bench/bench_message_cpu.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import process_cpu_s
from support.backend import BackendProcess, auth
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger


def run(seconds: float = 10.0, *, points_per_message: int = 5000) -> dict[str, float]:
    """CPU per one-point message in the backend and in the SDK, in milliseconds; the backend's CPU per point in
    messages of `points_per_message` points, in microseconds."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend = BackendProcess(f"sqlite:///{root / 'bench.db'}", root / "data")
        backend.start()
        try:
            job_id, token = backend.create_job()
            logger = TrainingLogger(
                job_id,
                backend_address=backend.address,
                token=token,
                spool_dir=root / "spool",
                settings=LoggerSettings(flush_interval_s=0.005, unwatched_flush_interval_s=0.005),
            )
            logger.log_metric("warm-up", 0.0)  # the streams open outside the measurement
            if not logger.flush(30):
                raise RuntimeError("the warm-up point was not delivered")
            backend_before, sdk_before = process_cpu_s(backend.process.pid), time.process_time()
            points = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                logger.log_metric("train/batch_loss", 0.5, step=points, epoch=0)
                points += 1
                time.sleep(0.01)
            if not logger.flush(60):
                raise RuntimeError("the points were not all delivered")
            backend_cpu = process_cpu_s(backend.process.pid) - backend_before
            sdk_cpu = time.process_time() - sdk_before
            report = logger.close(30)
            if report.committed_metrics != report.logged_metrics:
                raise RuntimeError(f"telemetry was not all delivered: {report}")
            large_cpu, large_points = _full_messages(backend, max(2, round(4 * seconds)), points_per_message)
        finally:
            backend.close()
    return {
        "message_cpu_ms_backend": backend_cpu / points * 1000,
        "message_cpu_ms_sdk": sdk_cpu / points * 1000,
        "backend_cpu_us_per_point": large_cpu / large_points * 1e6,
    }


def _full_messages(backend: BackendProcess, messages: int, size: int) -> tuple[float, int]:
    """Streams `messages` prebuilt messages of `size` points to a new job; the backend's CPU for them, and the
    points."""
    job_id, token = backend.create_job()
    now = time.time()
    requests = [
        telemetry_pb2.StreamMetricsRequest(
            job_id=job_id if index == 0 else "",
            points=[
                telemetry_pb2.MetricPoint(
                    key=f"train/metric_{sequence % 8}",
                    value=sequence * 0.001,
                    step=sequence,
                    epoch=sequence // 100_000,
                    wall_time=now,
                    sequence=sequence,
                )
                for sequence in range(index * size + 1, (index + 1) * size + 1)
            ],
        )
        for index in range(messages)
    ]
    stub = backend.telemetry()
    before = process_cpu_s(backend.process.pid)
    response = stub.StreamMetrics(iter(requests), metadata=auth(token), timeout=120)
    cpu = process_cpu_s(backend.process.pid) - before
    if response.points_committed != messages * size:
        raise RuntimeError(f"{response.points_committed} of {messages * size} points were committed")
    return cpu, messages * size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds), indent=2))


if __name__ == "__main__":
    main()
