"""A job cancelled while its trainer service is down: the backend stops the run once the trainer is back."""

from __future__ import annotations

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
    """The backend (SQLite) and the timm trainer service, with a short lease: a run still live that long after its
    job ended is a stray one."""
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
def test_a_job_cancelled_while_its_trainer_is_down_has_its_run_stopped_when_the_trainer_is_back(stack: Stack) -> None:
    # The job read CANCELLED, but its training process went on streaming into it, and the restarted trainer adopted
    # the run and kept training it, holding the trainer's only slot; cancelling again changed nothing.
    trainer_service = next(service for service in stack.services if service.name == "trainer-timm")
    with JobsClient(stack.backend_address, stack.token) as client:
        job_id = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=50, image_size=32
        ).job.job_id
        running = wait_until(
            lambda: (job := client.get_job(job_id)).status == "RUNNING" and job, 240, "the job RUNNING"
        )
        with TrainerClient(running.trainer_address, stack.token) as trainer:
            pid = wait_until(lambda: trainer.get_training(job_id=job_id).pid, 30, "the training process's pid")
        assert trainer_service.process is not None
        trainer_service.process.send_signal(signal.SIGKILL)
        trainer_service.process.wait(30)

        cancelled = client.cancel_job(job_id, reason="not needed")
        assert cancelled.status == "CANCELLED"
        assert Path(f"/proc/{pid}").exists()  # the cancel could not reach it

        stack.restart_service("trainer-timm")
        with TrainerClient(running.trainer_address, stack.token) as trainer:
            run = wait_until(
                lambda: (r := trainer.get_training(job_id=job_id)).state not in ("STARTING", "RUNNING") and r,
                120,
                "the adopted run stopped",
                interval=0.2,
            )
        assert run.state == "CANCELLED"
        assert client.get_job(job_id).status == "CANCELLED"
    log = (stack.data_dir / "logs" / "backend.log").read_text()
    assert f"job {job_id} ended CANCELLED but its run on {running.trainer_address} still trains" in log
