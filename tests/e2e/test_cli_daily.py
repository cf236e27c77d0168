"""The `tp` commands a user runs every day, against a real backend: what they print agrees with what was asked and
with each other.

- `tp logs --follow --level L` prints only the records at L or above, as `tp logs --level L` does (the level was
  ignored once following);
- every time `tp` prints is the local time (`tp jobs`, `tp show`, `tp logs`): `tp show` and `tp jobs` printed UTC
  while `tp logs` printed local time, so a status change and the line logged with it seemed hours apart;
- a Ctrl-C on `tp watch` once the job has ended says that it ended, and the view ends with its final status.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.fake_trainer import FakeTrainer
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import Job, JobsClient

OFFSET = dt.timedelta(hours=5, minutes=30)
ZONE = "TPT-05:30"
"""A POSIX TZ of UTC+05:30 (no tz database needed): a local time that differs from UTC, by a non-whole hour."""


@dataclass
class Seeded:
    backend: BackendProcess
    job: Job
    config: Path

    def tp(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [TP, *args],
            capture_output=True,
            text=True,
            env=backend_env(self.backend, self.config, **env),
            timeout=120,
        )


@pytest.fixture(scope="module")
def seeded(module_backend: BackendProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A COMPLETED job with a log record at each of info, warning and error."""
    data = tmp_path_factory.mktemp("daily")
    with JobsClient(module_backend.address, module_backend.internal_token) as client:
        created = client.create_job(
            framework="timm", model="resnet10t", dataset="digits", epochs=1, dispatch=False, display_name="daily"
        )
        logger = TrainingLogger(
            created.job.job_id,
            backend_address=module_backend.address,
            token=created.telemetry_token,
            spool_dir=data / "spool",
        )
        logger.update_status("running")
        logger.log_message("an info line", level="info")
        logger.log_message("a warning line", level="warning")
        logger.log_message("an error line", level="error")
        logger.update_status("completed")
        report = logger.close(timeout=30)
        assert report.pending_logs == 0
        job = client.get_job(created.job.job_id)
    yield Seeded(module_backend, job, data / "no-config.json")


@pytest.mark.parametrize("follow", [[], ["--follow"]], ids=["history", "follow"])
def test_logs_level_keeps_only_records_at_that_level_or_above(seeded: Seeded, follow: list[str]) -> None:
    result = seeded.tp("logs", seeded.job.job_id[:8], "--level", "warning", *follow)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["a warning line", "an error line"], result.stdout


def test_every_time_tp_prints_is_local_time(seeded: Seeded) -> None:
    job = seeded.job
    assert job.created_at is not None and job.status_events[-1].time is not None
    local = {"TZ": ZONE}
    created = (job.created_at + OFFSET).strftime("%Y-%m-%d %H:%M:%S")
    listed = seeded.tp("jobs", "--search", job.job_id, **local)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].endswith(created), listed.stdout

    shown = seeded.tp("show", job.job_id[:8], **local)
    assert shown.returncode == 0, shown.stderr
    ended = (job.status_events[-1].time + OFFSET).strftime("%H:%M:%S")
    assert f"  {ended}     RUNNING -> COMPLETED" in shown.stdout, shown.stdout

    with JobsClient(seeded.backend.address, seeded.backend.internal_token) as client:
        first = next(iter(client.logs(job.job_id)))
    logged = (dt.datetime.fromtimestamp(first.wall_time, dt.UTC) + OFFSET).strftime("%H:%M:%S")
    logs = seeded.tp("logs", job.job_id[:8], **local)
    assert logs.stdout.splitlines()[0].startswith(f"{logged} [info] "), logs.stdout


def test_ctrl_c_once_the_job_ended_says_so_not_that_it_runs_on(tmp_path: Path) -> None:
    # A cancelled job's view waits (up to LATE_RESULTS_S) for its trainer's last lines and checkpoint, printing
    # nothing: a Ctrl-C then said that the job "goes on running on its trainer" and how to cancel it.
    with FakeTrainer() as trainer:
        backend = BackendProcess(
            f"sqlite:///{tmp_path / 'backend.db'}",
            tmp_path / "backend-data",
            extra_env={"TP_TRAINERS": f"timm={trainer.address}"},
        )
        backend.start()
        process = None
        try:
            with JobsClient(backend.address, backend.internal_token) as client:
                job_id = client.create_job(framework="timm", model="resnet10t", dataset="digits", epochs=1).job.job_id
                deadline = time.monotonic() + 30
                while not client.get_job(job_id).trainer_address:  # the fake trainer took it
                    assert time.monotonic() < deadline, "the job was never dispatched"
                    time.sleep(0.05)
                process = subprocess.Popen(
                    [TP, "watch", job_id[:8]],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=backend_env(backend, tmp_path / "no-config.json"),
                )
                assert process.stdout is not None
                assert process.stdout.readline().startswith("status PENDING")  # following now
                client.cancel_job(job_id, reason="enough")
                time.sleep(2)  # well inside the wait for the trainer's last lines, which the fake never sends
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=60)
        finally:
            if process is not None and process.poll() is None:
                process.kill()
                process.communicate()
            backend.close()
    assert process.returncode == 130, out + err
    assert "goes on running" not in err and "tp cancel" not in err, err
    assert f"job {job_id} has ended (CANCELLED)" in err, err
    assert out.rstrip().endswith("status CANCELLED (enough)"), out  # the view ends as it ends without Ctrl-C
