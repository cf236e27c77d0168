"""`tp-backend --workers 2` on PostgreSQL with one worker killed with SIGKILL while several trainers stream into
both: the supervisor restarts it, the trainers' loggers resume on whichever worker they reach, and every point and
log record of every job is stored exactly once."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import postgres_database
from support.workers import Notifications, WorkersBackend

from reliability.polling import wait_until

JOBS = 4
TOTAL = 40_000
# Each trainer stops at the gate until the kill has happened, so the kill lands while points are being logged and
# streamed, however fast either side runs.
GATE = 30_000
LOG_EVERY = 10  # a log record every 10 points
ARGS = (str(TOTAL), str(GATE), str(LOG_EVERY))

# A training process: its own connection to the backend, so the jobs spread over the workers as trainers do.
TRAINER = """
import dataclasses, json, sys, time
from trainingplatform_sdk import LoggerSettings, TrainingLogger

job_id, token, address, spool, total, gate, log_every = sys.argv[1:8]
total, gate, log_every = int(total), int(gate), int(log_every)
settings = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
logger = TrainingLogger(job_id, backend_address=address, token=token, spool_dir=spool, settings=settings)
for index in range(total):
    if index == gate:
        print(json.dumps({"event": "gate"}), flush=True)
        sys.stdin.readline()
    logger.log_metric("train/loss", float(index), step=index)
    if index % log_every == 0:
        logger.log_message(f"step {index}", step=index)
    if index % 50 == 0:
        time.sleep(0.001)  # a training loop, not a tight loop
flushed = logger.flush(120)
report = logger.close(30)
print(json.dumps({"event": "report", "flushed": flushed, **dataclasses.asdict(report)}), flush=True)
"""


@pytest.fixture
def workers_backend(tmp_path: Path) -> Iterator[tuple[WorkersBackend, Notifications]]:
    with postgres_database() as url:
        notifications = Notifications(url)
        notifications.start()
        backend = WorkersBackend(url, tmp_path / "backend-data", workers=2)
        backend.start()
        try:
            yield backend, notifications
        finally:
            backend.close()
            notifications.close()


@pytest.mark.timeout(300)
def test_a_worker_killed_mid_stream_loses_and_doubles_nothing(
    workers_backend: tuple[WorkersBackend, Notifications], tmp_path: Path, rng: random.Random
) -> None:
    backend, notifications = workers_backend
    jobs = [backend.create_job() for _ in range(JOBS)]
    pks = {job_id: backend.job_pk(job_id) for job_id, _ in jobs}
    created = time.monotonic()  # CreateJob notifies too: what each worker commits counts from here
    kill_at = rng.randint(2_000, GATE - 10_000)
    print(f"kill once every job has {kill_at} points committed")
    trainers = [
        subprocess.Popen(
            [sys.executable, "-c", TRAINER, job_id, token, backend.address, str(tmp_path / f"spool-{index}"), *ARGS],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for index, (job_id, token) in enumerate(jobs)
    ]
    try:
        wait_until(
            lambda: _alive(trainers) and all(_committed(backend, job_id) >= kill_at for job_id, _ in jobs),
            120,
            f"{kill_at} points committed for every job",
            interval=0.05,
        )
        # Kill a worker that is committing for a job right now.
        since = time.monotonic()
        wait_until(lambda: notifications.instances(since=since), 30, "a commit after the wait")
        busy = notifications.instances(since=since)
        workers = backend.serving_workers()
        index = next(i for i, (_, instance) in sorted(workers.items()) if instance in busy)
        killed = backend.kill_worker(index)
        victims = {job_id for job_id, pk in pks.items() if workers[index][1] in notifications.instances(pk, created)}
        spread = {
            i: sorted(pks[j] for j in pks if w[1] in notifications.instances(pks[j], created))
            for i, w in workers.items()
        }
        print(f"jobs streaming into each worker: {spread}; killed worker {index} (pid {killed})")
        for trainer in trainers:
            assert trainer.stdout is not None and trainer.stdin is not None
            assert json.loads(trainer.stdout.readline())["event"] == "gate"
            trainer.stdin.write("go\n")
            trainer.stdin.flush()
        reports = []
        for trainer in trainers:
            out, _ = trainer.communicate(timeout=180)
            assert trainer.returncode == 0, out
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for trainer in trainers:
            if trainer.poll() is None:
                trainer.kill()
    backend.wait_log(f"worker {index} (pid {killed}) was killed by SIGKILL", 10)
    wait_until(lambda: backend.serving_workers()[index][0] != killed, 60, "the killed worker restarted")

    records = (TOTAL + LOG_EVERY - 1) // LOG_EVERY
    for (job_id, _), report in zip(jobs, reports, strict=True):
        assert report["flushed"] and report["error"] is None, report
        assert backend.metric_sequences(job_id) == list(range(1, TOTAL + 1))
        assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(TOTAL)]
        assert backend.log_sequences(job_id) == list(range(1, records + 1))
        cursor = backend.cursor_row(job_id, "metrics")
        # What the logger reports logged and committed is what the database holds, once.
        assert report["logged_metrics"] == report["committed_metrics"] == cursor["committed_count"] == TOTAL
        assert report["logged_logs"] == report["committed_logs"] == records
        assert cursor["last_sequence"] == TOTAL and cursor["missing_count"] == 0
        assert report["pending_metrics"] == report["pending_logs"] == 0
        assert report["dropped"] == report["invalid"] == 0
        if job_id in victims:  # its stream broke with the worker, and its logger resumed it on another
            assert report["reconnects"] >= 1, report
    assert victims


def _committed(backend: WorkersBackend, job_id: str) -> int:
    try:
        return backend.cursor_row(job_id)["committed_count"]
    except Exception:  # no cursor row yet: nothing committed
        return 0


def _alive(trainers: list[subprocess.Popen[str]]) -> bool:
    for trainer in trainers:
        assert trainer.poll() is None, f"a trainer exited with {trainer.returncode}"
    return True
