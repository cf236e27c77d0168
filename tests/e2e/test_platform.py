"""The whole platform: `tp` commands as subprocesses against a real stack (backend + both trainer services)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import free_port
from support.tp import TP, shell_env
from trainingplatform_sdk.cli.stack import Stack
from trainingplatform_sdk.clients import JobsClient, TrainerClient


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("stack")
    platform = Stack(
        data,
        backend_port=free_port(),
        timm_port=free_port(),
        ultralytics_port=free_port(),
        frameworks=("timm",),
        backend_env={"TP_WATCH_INTERVAL_S": "0.5", "TP_TRAINER_LEASE_S": "3"},
    )
    platform.start()
    yield platform
    platform.stop()


def tp(stack: Stack, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = shell_env(
        TP_BACKEND_ADDRESS=stack.backend_address,
        INTERNAL_AUTH_TOKEN=stack.token,
        TP_CONFIG=str(stack.data_dir / "no-config.json"),
    )
    return subprocess.run([TP, *args], capture_output=True, text=True, env=env, timeout=timeout)


def wait_for(condition, timeout: float = 120, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")


def test_train_follows_a_job_to_completion_and_the_read_commands_work(stack: Stack, tmp_path: Path):
    result = tp(
        stack,
        "train",
        "--framework",
        "timm",
        "--model",
        "resnet10t",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--image-size",
        "32",
        "--log-every-n-steps",
        "5",
        "--advanced-config",
        '{"optimizer": "adamw", "seed": 1}',
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "status RUNNING" in out and "status COMPLETED" in out
    assert "epoch 2/2 done" in out
    assert "Starting training: resnet10t" in out
    job_id = out.split("job ", 1)[1].split(" ", 1)[0]
    with JobsClient(stack.backend_address, stack.token) as client:
        job = client.get_job(job_id)
        assert job.status == "COMPLETED"
        accuracy = [p.value for p in client.metrics(job_id, keys=["val/accuracy"])]
        assert len(accuracy) == 2 and accuracy[-1] > 0.8
    listed = tp(stack, "jobs")
    assert listed.returncode == 0 and job_id in listed.stdout and "COMPLETED" in listed.stdout
    shown = tp(stack, "show", job_id)
    assert shown.returncode == 0 and "QUEUED" in shown.stdout and "RUNNING" in shown.stdout
    logs = tp(stack, "logs", job_id)
    assert logs.returncode == 0 and "Starting training: resnet10t" in logs.stdout
    png = tmp_path / "curves.png"
    metrics = tp(stack, "metrics", job_id, "--key", "train/loss", "--key", "val/loss", "--plot", str(png))
    assert metrics.returncode == 0, metrics.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    watched = tp(stack, "watch", job_id)
    assert watched.returncode == 0 and "COMPLETED" in watched.stdout


def test_train_prints_the_final_status_after_the_last_progress_line(stack: Stack):
    """`tp train`'s live output ends with the job's final status: the progress bar, complete, comes before it, and
    nothing of the progress (bar, log lines) after it; the summary follows, after a blank line."""
    result = tp(
        stack,
        "train",
        "--framework",
        "timm",
        "--model",
        "resnet10t",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--log-every-n-steps",
        "1",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    job_id = lines[0].split(" ", 2)[1]
    final = lines.index("status COMPLETED")
    live = lines[:final]
    assert lines[final + 1 :][:2] == ["", lines[final + 2]] and lines[final + 2].startswith(f"job {job_id}: COMPLETED")
    bars = [line for line in live if re.match(r"epoch \d+/\d+ \[", line)]
    assert bars and bars[-1].startswith("epoch 1/1 [########################] 100% step "), result.stdout
    assert live[-1] == bars[-1], result.stdout  # the final bar is the last progress line, right before the status
    with JobsClient(stack.backend_address, stack.token) as client:
        last_step = max(point.step for point in client.metrics(job_id) if point.step is not None)
    assert f" step {last_step} " in bars[-1] + " ", (last_step, bars[-1])


def test_cancel_ends_the_job_cancelled_and_keeps_its_telemetry(stack: Stack):
    with JobsClient(stack.backend_address, stack.token) as client:
        job = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=50, image_size=32, log_every_n_steps=1
        ).job
        wait_for(lambda: client.get_job(job.job_id).last_metric_sequence > 0)
        result = tp(stack, "cancel", job.job_id)
        assert result.returncode == 0 and "CANCELLED" in result.stdout
        watched = tp(stack, "watch", job.job_id)
        assert watched.returncode == 3
        with TrainerClient(client.get_job(job.job_id).trainer_address, stack.token) as trainer:
            run = wait_for(lambda: (r := trainer.get_training(job_id=job.job_id)).state != "RUNNING" and r)
            assert run.state == "CANCELLED"
        assert client.get_job(job.job_id).status == "CANCELLED"
        assert client.get_job(job.job_id).last_metric_sequence > 0


def test_a_killed_training_process_fails_the_job_with_the_signal(stack: Stack):
    with JobsClient(stack.backend_address, stack.token) as client:
        job = client.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=50, image_size=32).job
        wait_for(lambda: client.get_job(job.job_id).status == "RUNNING")
        address = client.get_job(job.job_id).trainer_address
        with TrainerClient(address, stack.token) as trainer:
            pid = wait_for(lambda: trainer.get_training(job_id=job.job_id).pid)
            os.kill(pid, signal.SIGKILL)
        failed = wait_for(lambda: (j := client.get_job(job.job_id)).finished and j, timeout=30)
        assert failed.status == "FAILED"
        assert "signal 9" in failed.error_message or "SIGKILL" in failed.error_message


def test_errors_are_one_line_without_a_traceback(stack: Stack):
    result = tp(stack, "show", "00000000-0000-0000-0000-000000000000")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: job") and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    bad = tp(stack, "train", "--framework", "timm", "--model", "resnet10tt", "--dataset", "digits", "--epochs", "1")
    # Refused at CreateJob (the backend asks the trainer, which knows the models): no job, one line on stderr.
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "resnet10t" in bad.stderr and "Traceback" not in bad.stderr  # the closest valid name is suggested
    wrong_type = tp(
        stack,
        "train",
        "--framework",
        "timm",
        "--model",
        "resnet10t",
        "--dataset",
        "digits",
        "--advanced-config",
        '{"weight_decay": "lots"}',
    )
    assert wrong_type.returncode == 2 and "weight_decay" in wrong_type.stderr
    # An option the framework does not have is refused at submit (the backend asks the trainer), with the
    # closest valid names; no job is created.
    unknown = tp(
        stack,
        "train",
        "--framework",
        "timm",
        "--model",
        "resnet10t",
        "--dataset",
        "digits",
        "--advanced-config",
        '{"optimizer": "sgdd", "label_smoothin": 0.1}',
    )
    assert unknown.returncode == 2 and "'sgd'" in unknown.stderr, unknown.stderr


def test_a_job_whose_trainer_service_and_process_die_fails_within_the_lease(stack: Stack):
    """The whole trainer is gone (service and training process killed): the backend's lease fails the job with the
    reason, within TP_TRAINER_LEASE_S + TP_WATCH_INTERVAL_S (3 s + 0.5 s here)."""
    with JobsClient(stack.backend_address, stack.token) as client:
        job = client.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=50, image_size=32).job
        wait_for(lambda: client.get_job(job.job_id).status == "RUNNING")
        service = next(s for s in stack.services if s.name == "trainer-timm")
        with TrainerClient(service.address, stack.token) as trainer:
            pid = wait_for(lambda: trainer.get_training(job_id=job.job_id).pid)
        os.killpg(service.process.pid, signal.SIGKILL)  # the service, in its own session
        os.killpg(pid, signal.SIGKILL)  # the training process, in another
        failed = wait_for(lambda: (j := client.get_job(job.job_id)).finished and j, timeout=60)
        assert failed.status == "FAILED"
        assert "unreachable" in failed.error_message and service.address in failed.error_message
        # The stack's trainer is gone: start it again for any later test.
        service.process.wait(10)
        stack.restart_service(service.name)
