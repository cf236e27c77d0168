"""A training process killed with SIGKILL mid-epoch: the job ends FAILED and the telemetry it sent is kept."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import free_port
from trainingplatform_sdk.cli.stack import Stack
from trainingplatform_sdk.clients import JobsClient, TrainerClient

from reliability.polling import wait_until


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The backend (SQLite) and the timm trainer service on free ports, in a temporary data directory."""
    platform = Stack(
        tmp_path / "stack",
        backend_port=free_port(),
        timm_port=free_port(),
        ultralytics_port=free_port(),
        frameworks=("timm",),
        backend_env={"TP_WATCH_INTERVAL_S": "0.5", "TP_TRAINER_LEASE_S": "3"},
    )
    platform.start()
    try:
        yield platform
    finally:
        platform.stop()


@pytest.mark.timeout(300)
def test_a_trainer_killed_mid_epoch_fails_the_job_and_keeps_its_telemetry(stack: Stack, rng: random.Random) -> None:
    # Kill after this many batch losses: within the first epoch (22 steps of the digits set at the default batch).
    kill_after = rng.randint(2, 12)
    print(f"SIGKILL once {kill_after} metric points are committed")
    with JobsClient(stack.backend_address, stack.token) as client:
        job_id = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=50, image_size=32, log_every_n_steps=1
        ).job.job_id
        running = wait_until(
            lambda: (
                (job := client.get_job(job_id)).status == "RUNNING" and job.last_metric_sequence >= kill_after and job
            ),
            240,
            f"job RUNNING with {kill_after} metric points",
            interval=0.05,
        )
        with TrainerClient(running.trainer_address, stack.token) as trainer:
            pid = wait_until(lambda: trainer.get_training(job_id=job_id).pid, 30, "the training process's pid")
            before = list(client.metrics(job_id))
            os.kill(pid, signal.SIGKILL)
            run = wait_until(
                lambda: (r := trainer.get_training(job_id=job_id)).state != "RUNNING" and r, 60, "the run ended", 0.1
            )
        failed = wait_until(
            lambda: (job := client.get_job(job_id)).finished and job, 60, "the job's terminal status", 0.1
        )
        metrics = list(client.metrics(job_id))
        logs = list(client.logs(job_id))

    assert run.state == "FAILED" and "signal 9" in run.error_message
    assert failed.status == "FAILED"
    assert "signal 9" in failed.error_message and "SIGKILL" in failed.error_message
    assert [event.to_status for event in failed.status_events][-2:] == ["RUNNING", "FAILED"]
    # Everything stored before the kill is still there, unchanged; what follows it is only what the process had
    # already sent: the stored sequences are a prefix 1..N (points lost from the killed process's memory would be
    # at the end, never in the middle).
    assert metrics[: len(before)] == before
    assert [point.sequence for point in metrics] == list(range(1, len(metrics) + 1))
    assert len(metrics) >= len(before) >= kill_after
    assert failed.last_metric_sequence == len(metrics)
    assert [line.sequence for line in logs] == list(range(1, len(logs) + 1)) and logs
    batch_losses = [point for point in metrics if point.key == "train/batch_loss"]
    assert [point.step for point in batch_losses] == list(range(1, len(batch_losses) + 1))
    epochs = sorted({p.epoch for p in metrics if p.epoch is not None})  # system/ metrics carry no epoch
    print(f"{len(metrics)} metric points and {len(logs)} log lines kept; epochs {epochs}")
