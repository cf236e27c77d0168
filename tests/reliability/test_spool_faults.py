"""The spool under faults: a full disk while the backend is down, a forked child outliving its parent, a host crash.

Each runs a real training process (`spool_script.py`) against a real backend process, and then replays its spool
the way the trainer service does (a new TrainingLogger on the same directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.streams import request_points
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger
from trainingplatform_sdk.telemetry.spool import Spool

SCRIPT = Path(__file__).with_name("spool_script.py")
SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)


def run_script(
    backend: BackendProcess, token: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    environment = {**os.environ, "BACKEND_API_URL": f"grpc://{backend.address}", "JOB_TELEMETRY_TOKEN": token}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env={**environment, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_events(process: subprocess.Popen[str], until: str) -> list[dict]:
    assert process.stdout is not None
    events = []
    while True:
        line = process.stdout.readline()
        assert line, f"the script ended before {until!r}: {process.stderr.read() if process.stderr else ''}"
        events.append(json.loads(line))
        if events[-1]["event"] == until:
            return events


def spooled_sequences(directory: Path, job_id: str) -> list[int]:
    spool = Spool(directory, job_id, 1 << 30, 1 << 20)
    try:
        return [
            point.sequence
            for record in spool.records("metrics")
            for point in request_points(telemetry_pb2.StreamMetricsRequest.FromString(spool.read(record)))
        ]
    finally:
        spool.close()


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[dict[str, str]]:
    """A tmpfs of `size` mounted at `path` (yields no extra environment); where mounting is not permitted, a plain
    directory and an environment that limits the process's file size (RLIMIT_FSIZE: a write past it fails)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        yield {"TP_TEST_FSIZE_LIMIT": str(256 * 1024)}
        return
    try:
        yield {}
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_enospc_in_the_spool_while_the_backend_is_down_keeps_training_memory_flat(
    backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = backend.create_job()
    assert backend.stop() == 0
    points, memory_points = 600_000, 20_000
    with small_filesystem(tmp_path / "disk", "1m") as env:
        spool_dir = tmp_path / "disk" / "spool"
        trainer = run_script(
            backend,
            token,
            "full-disk",
            job_id,
            str(spool_dir),
            str(points),
            env={**env, "TP_TEST_MEMORY_POINTS": str(memory_points)},
        )
        events = read_events(trainer, "closed")
        _, stderr = trainer.communicate(timeout=60)
        assert trainer.returncode == 0, stderr[-3000:]
        progress = [event for event in events if event["event"] == "progress"]
        logged, report = events[-2], events[-1]["report"]
        # The sender survived the full disk: the logger still delivers, and the caller's memory stayed flat.
        assert logged["enabled"] and logged["sender_alive"], stderr[-3000:]
        assert max(event["buffered"] for event in progress[1:]) < 50_000, [event["buffered"] for event in progress]
        growth = logged["rss"] - progress[1]["rss"]
        assert growth < 20 * 1024 * 1024, f"resident memory grew {growth} bytes: {progress}"
        # Every point is accounted for: spooled (and still pending) or dropped; the loss is logged once.
        assert report["logged_metrics"] == points and report["error"] is None
        assert report["dropped"] > 0 and report["spooled"] > 0
        assert report["spooled"] + report["dropped"] == points
        assert report["pending_metrics"] == report["spooled"]
        assert stderr.count("points are dropped") == 1, stderr[-3000:]
        spooled = spooled_sequences(spool_dir, job_id)
        assert len(spooled) == report["spooled"]

        # The backend back: a replay delivers everything the full disk kept.
        backend.restart()
        replay = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=spool_dir)
        assert replay.stats.replayed == len(spooled)
        final = replay.close(60)
    assert final.pending_metrics == 0 and final.error is None
    assert backend.metric_sequences(job_id) == spooled


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_fork_plus_replay(backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]) -> None:
    # A training process forks a DataLoader worker that outlives it; the spool it leaves must still be replayable.
    job_id, token = backend.create_job()
    assert backend.stop() == 0
    spool_dir = tmp_path / "spool"
    trainer = run_script(backend, token, "fork-child", job_id, str(spool_dir), "3000")
    child = 0
    try:
        events = read_events(trainer, "closed")
        child = events[-2]["child"]
        assert trainer.wait(30) == 0
        assert events[-1]["report"]["pending_metrics"] == 3000
        os.kill(child, 0)  # the child is still alive

        backend.restart()
        replay = open_logger(
            job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS
        )
        assert replay.stats.replayed == 3000
        report = replay.close(60)
    finally:
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        trainer.kill()
        trainer.wait()
    assert report.committed_metrics == 3000 and report.pending_metrics == 0 and report.error is None
    assert backend.metric_sequences(job_id) == list(range(1, 3001))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_host_crash_never_reuses_a_sequence(
    backend: BackendProcess, tmp_path: Path, open_logger: Callable[..., TrainingLogger]
) -> None:
    # The crash is simulated by killing the process and then putting back each state slot as it was when it was
    # last fsync-ed (the script copies a slot at each fsync of it): what a power loss leaves of unsynced writes
    # in the worst case. A slot never fsync-ed is removed.
    job_id, token = backend.create_job()
    spool_dir, snapshots = tmp_path / "spool", tmp_path / "synced"
    snapshots.mkdir()
    trainer = run_script(backend, token, "fsync-snapshots", job_id, str(spool_dir), "3000", str(snapshots))
    try:
        read_events(trainer, "flushed")
    finally:
        trainer.kill()
        trainer.wait()
    assert backend.metric_sequences(job_id) == list(range(1, 3001))
    for slot in ("state.0", "state.1"):
        synced = snapshots / slot
        if synced.exists():
            (spool_dir / slot).write_bytes(synced.read_bytes())
        else:
            (spool_dir / slot).unlink(missing_ok=True)

    # The trainer restarts while the backend is down: it cannot ask the backend's cursor before numbering.
    assert backend.stop() == 0
    restarted = open_logger(
        job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS
    )
    for index in range(3000, 3100):
        restarted.log_metric("train/index", float(index), step=index)
    restarted.close(0.5)
    spooled = spooled_sequences(spool_dir, job_id)
    assert len(spooled) == 100 and min(spooled) > 3000, spooled[:5]

    backend.restart()
    replay = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=spool_dir, settings=SETTINGS)
    report = replay.close(60)
    assert report.pending_metrics == 0 and report.error is None
    rows = backend.metric_rows(job_id)
    assert [row[2] for row in rows] == [float(index) for index in range(3100)]
    assert backend.cursor_row(job_id, "metrics")["duplicate_count"] == 0
