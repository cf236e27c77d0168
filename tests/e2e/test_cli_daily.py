"""The `tp` commands a user runs every day, against a real backend: what they print agrees with what was asked and
with each other.

- `tp logs --follow --level L` prints only the records at L or above, as `tp logs --level L` does (the level was
  ignored once following).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.tp import TP, backend_env
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.clients import Job, JobsClient


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
