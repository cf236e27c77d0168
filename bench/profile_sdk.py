"""Where the SDK's CPU per telemetry message goes: the scenario of `bench_message_cpu.py` (a point every 10 ms, a
5 ms flush interval, a real backend on SQLite) sampled by py-spy, summarized per thread and per function.

Prints (and with --output writes) the CPU per message of each thread of this process (from /proc, so gRPC's own
threads count too), then the top functions by samples: self (the function itself) and inclusive (with what it
calls). py-spy (requirements-dev.txt) samples this process from outside, so the profile costs the process nothing
but the pauses of sampling; the per-thread CPU comes from /proc and is exact.

    .venv/bin/python bench/profile_sdk.py [--seconds 10] [--output .cache/profile_sdk.txt]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from proc_cpu import threads_cpu_s
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger


def _cpu_by_thread() -> dict[int, float]:
    return {tid: cpu for tid, (_, cpu) in threads_cpu_s().items()}


def summarize(raw: str, top: int) -> list[str]:
    """The top functions of py-spy's collapsed stacks ("frame;frame;... count"), self and inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"samples: {total}", "", f"top {top} by own samples:"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in own.most_common(top)]
    lines += ["", f"top {top} by inclusive samples:"]
    lines += [f"  {count / total:6.1%}  {frame}" for frame, count in inclusive.most_common(top)]
    return lines


def run(seconds: float, top: int) -> list[str]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
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
            logger.log_metric("warm-up", 0.0)
            if not logger.flush(30):
                raise RuntimeError("the warm-up point was not delivered")
            raw_path = root / "profile.txt"
            command = [py_spy, "record", "--pid", str(os.getpid()), "--format", "raw", "--rate", "500"]
            command += ["--threads", "--duration", str(int(seconds)), "--output", str(raw_path), "--nonblocking"]
            profiler = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches
            before, cpu_before = _cpu_by_thread(), time.process_time()
            points = 0
            deadline = time.monotonic() + seconds - 1.5
            while time.monotonic() < deadline:
                logger.log_metric("train/batch_loss", 0.5, step=points, epoch=0)
                points += 1
                time.sleep(0.01)
            if not logger.flush(60):
                raise RuntimeError("the points were not all delivered")
            after, cpu = _cpu_by_thread(), time.process_time() - cpu_before
            names = {thread.native_id: thread.name for thread in threading.enumerate()}
            profiler.wait(seconds + 30)
            logger.close(30)
            raw = raw_path.read_text() if raw_path.exists() else ""
        finally:
            backend.close()
    lines = [f"SDK CPU per one-point message: {cpu / points * 1000:.3f} ms ({points} messages)", "", "per thread:"]
    for thread_id, seconds_after in sorted(after.items(), key=lambda item: before.get(item[0], 0) - item[1]):
        used = seconds_after - before.get(thread_id, 0.0)
        if used > 0:
            name = names.get(thread_id, "(gRPC's native thread)")
            lines.append(f"  {used / points * 1000:.3f} ms/message  {name[:60]}")
    return [*lines, "", *summarize(raw, top)]


def main(profile: Callable[[float, int], list[str]] = run, doc: str = __doc__, seconds: float = 10.0) -> None:
    """The command line of a profiler: `profile(seconds, top)` printed, and written to --output."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=seconds)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    text = "\n".join(profile(args.seconds, args.top)) + "\n"
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)


if __name__ == "__main__":
    main()
