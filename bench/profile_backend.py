"""Where the backend's CPU per telemetry message goes: the scenario of `bench_message_cpu.py` (a point every 10 ms,
a 5 ms flush interval, a real backend on SQLite), the backend process sampled by py-spy, summarized per thread and
per function.

Prints (and with --output writes) the CPU per message of each thread of the backend (from /proc, so gRPC's own
threads count too), then the top functions by samples, self and inclusive (`profile_sdk.py` does the same for the
SDK's side).

    .venv/bin/python bench/profile_backend.py [--seconds 15] [--output .cache/profile_backend.txt]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import threads_cpu_s
from profile_sdk import main, summarize
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger


def run(seconds: float, top: int) -> list[str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        backend = BackendProcess(f"sqlite:///{root / 'bench.db'}", root / "data")
        backend.start()
        pid = backend.process.pid  # type: ignore[union-attr]
        try:
            job_id, token = backend.create_job()
            logger = TrainingLogger(
                job_id,
                backend_address=backend.address,
                token=token,
                spool_dir=root / "spool",
                settings=LoggerSettings(flush_interval_s=0.005, unwatched_flush_interval_s=0.005),
            )
            logger.log_metric("warm-up", 0.0)
            if not logger.flush(30):
                raise RuntimeError("the warm-up point was not delivered")
            raw_path = root / "profile.txt"
            command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "500", "--threads"]
            command += ["--duration", str(int(seconds)), "--output", str(raw_path), "--nonblocking"]
            profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
            before = threads_cpu_s(pid)
            points = 0
            deadline = time.monotonic() + seconds - 1.5
            while time.monotonic() < deadline:
                logger.log_metric("train/batch_loss", 0.5, step=points, epoch=0)
                points += 1
                time.sleep(0.01)
            if not logger.flush(60):
                raise RuntimeError("the points were not all delivered")
            after = threads_cpu_s(pid)
            profiler.wait(seconds + 30)
            logger.close(30)
            raw = raw_path.read_text() if raw_path.exists() else ""
        finally:
            backend.close()
    used = {tid: cpu - before.get(tid, (name, 0.0))[1] for tid, (name, cpu) in after.items()}
    total = sum(used.values())
    lines = [f"backend CPU per one-point message: {total / points * 1000:.3f} ms ({points} messages)", ""]
    lines.append("per thread:")
    for tid, cpu in sorted(used.items(), key=lambda item: -item[1]):
        if cpu > 0:
            lines.append(f"  {cpu / points * 1000:.3f} ms/message  {after[tid][0]}")
    return [*lines, "", *summarize(raw, top)]


if __name__ == "__main__":
    main(run, __doc__, seconds=15.0)
