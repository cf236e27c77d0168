"""A stand-in training process for the spool's fault tests; progress goes to stdout as JSON lines.

    python spool_script.py MODE JOB_ID SPOOL_DIR [ARG]

MODE is one of:
  - `full-disk POINTS`: log POINTS metric points in a tight training loop, printing the process's resident memory
    every 50,000 points, then close and print the report. With TP_TEST_FSIZE_LIMIT set, the process's file size
    limit (RLIMIT_FSIZE) is set to that many bytes and SIGXFSZ ignored, so a write past it fails with EFBIG;
  - `fork-child POINTS`: log POINTS points, fork a child that sleeps for an hour (a DataLoader worker that outlives
    its parent), print the child's pid, close and exit;
  - `fsync-snapshots POINTS SNAPSHOT_DIR`: copy each spool state slot into SNAPSHOT_DIR whenever it is fsync-ed
    (what a power loss leaves of it), log POINTS points, flush, print `flushed`, then wait to be killed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import sys
import time
from pathlib import Path


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def snapshot_state_slots_at_fsync(snapshot_dir: Path) -> None:
    """Wraps os.fsync: after each fsync of a state slot, a copy of that slot goes to `snapshot_dir`."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        if path.name.startswith("state."):
            shutil.copyfile(path, snapshot_dir / path.name)

    os.fsync = fsync  # type: ignore[assignment]


def main() -> None:
    mode, job_id, spool_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    points = int(sys.argv[4])
    limit = os.environ.get("TP_TEST_FSIZE_LIMIT")
    if limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    if mode == "fsync-snapshots":
        snapshot_state_slots_at_fsync(Path(sys.argv[5]))

    from trainingplatform_sdk import LoggerSettings, TrainingLogger

    settings = LoggerSettings(
        reconnect_initial_backoff_s=0.05,
        reconnect_max_backoff_s=0.5,
        memory_buffer_points=int(os.environ.get("TP_TEST_MEMORY_POINTS", "100000")),
    )
    logger = TrainingLogger.from_env(job_id, spool_dir=spool_dir, settings=settings)
    emit("started", replayed=logger.stats.replayed)
    for index in range(points):
        logger.log_metric("train/index", float(index), step=index)
        if index % 50_000 == 0:
            time.sleep(0.2)  # lets the sender run, as a training step's GPU wait would
            emit("progress", logged=index, rss=resident_bytes(), buffered=len(logger._buffer))
    if mode == "full-disk":
        emit("logged", rss=resident_bytes(), enabled=logger.enabled, sender_alive=logger._sender.is_alive())
        report = logger.close(1)
        emit("closed", report=dataclasses.asdict(report))
    elif mode == "fork-child":
        child = os.fork()
        if child == 0:
            time.sleep(3600)
            os._exit(0)
        emit("forked", child=child)
        report = logger.close(0.5)
        emit("closed", report=dataclasses.asdict(report))
    elif mode == "fsync-snapshots":
        assert logger.flush(60), logger.stats
        emit("flushed", stats=dataclasses.asdict(logger.stats))
        time.sleep(3600)


if __name__ == "__main__":
    main()
