"""The backend killed with SIGKILL three times during one long metric stream: every point stored exactly once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

SETTINGS = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
TOTAL = 200_000
# The trainer stops at each gate until the kill before it has happened, so every kill lands while points are
# being logged and streamed, however fast either side runs.
GATES = (60_000, 120_000, 180_000)


@pytest.mark.timeout(300)
def test_exactly_200000_points_through_three_backend_kills(
    backend: BackendProcess, tmp_path: Path, rng: random.Random, open_logger: Callable[..., TrainingLogger]
) -> None:
    job_id, token = backend.create_job()
    # Kill i once this much is committed: past the previous gate, and at least 20,000 before the next one.
    kill_at = [rng.randint(low, gate - 20_000) for low, gate in zip((5_000, *GATES[:-1]), GATES, strict=True)]
    print(f"kills once {kill_at} points are committed")
    logger = open_logger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path, settings=SETTINGS)
    gates = {gate: threading.Event() for gate in GATES}

    def train() -> None:
        for index in range(TOTAL):
            if index in gates:
                gates[index].wait(120)
            logger.log_metric("train/loss", float(index), step=index, epoch=index // 20_000)
            if index % 50 == 0:
                time.sleep(0.001)  # a training loop, not a tight loop

    trainer = threading.Thread(target=train, name="trainer")
    trainer.start()
    try:
        for committed, gate in zip(kill_at, gates.values(), strict=True):
            wait_until(lambda n=committed: logger.stats.committed_metrics >= n, 120, f"{committed} points committed")
            backend.kill()
            gate.set()
            backend.restart()
    finally:
        for gate in gates.values():
            gate.set()
        trainer.join(120)
    assert logger.flush(120), logger.stats
    report = logger.close(30)

    assert backend.metric_sequences(job_id) == list(range(1, TOTAL + 1))
    assert [row[2] for row in backend.metric_rows(job_id)] == [float(i) for i in range(TOTAL)]
    # The delivery report agrees with the database.
    cursor = backend.cursor_row(job_id, "metrics")
    assert report.logged_metrics == report.committed_metrics == cursor["committed_count"] == TOTAL
    assert cursor["last_sequence"] == TOTAL and cursor["missing_count"] == 0
    assert report.duplicates == cursor["duplicate_count"]
    assert report.pending_metrics == 0 and report.dropped == 0 and report.invalid == 0 and report.error is None
    assert report.reconnects >= 3
    assert list(tmp_path.glob("*.seg")) == []  # every delivered segment is deleted
