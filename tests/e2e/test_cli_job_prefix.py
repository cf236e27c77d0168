"""`tp show 3f2a` (and every command that names a job) resolves a prefix of a job id by reading the jobs that hold
it, not every job of the backend: with a few thousand jobs each command took seconds, paging through them all."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk.cli.main import resolve_job
from trainingplatform_sdk.cli.output import CliError
from trainingplatform_sdk.clients import Job, JobsClient

JOBS = 120
"""More than a page of ListJobs (100)."""


class _ReadCounting(JobsClient):
    """A real client that counts the jobs the backend sent it."""

    read = 0

    def list_jobs(self, **filters: Any) -> Iterator[Job]:
        for job in super().list_jobs(**filters):
            self.read += 1
            yield job


@pytest.fixture(scope="module")
def job_ids(module_backend: BackendProcess) -> list[str]:
    with JobsClient(module_backend.address, module_backend.internal_token) as client:
        return [
            client.create_job(
                framework="timm", model="resnet10t", dataset="digits", epochs=1, dispatch=False, display_name=f"j{i}"
            ).job.job_id
            for i in range(JOBS)
        ]


def test_a_prefix_is_resolved_from_the_jobs_that_hold_it(module_backend: BackendProcess, job_ids: list[str]) -> None:
    wanted = job_ids[JOBS // 2]
    with _ReadCounting(module_backend.address, module_backend.internal_token) as client:
        assert resolve_job(client, wanted[:8].upper()) == wanted
        assert client.read < 5, f"{client.read} jobs read to resolve one prefix"


@pytest.mark.parametrize("prefix", ["a" * 300, "3f%", "x y", "é"])
def test_a_prefix_no_job_id_can_start_with_is_no_match(module_backend: BackendProcess, prefix: str) -> None:
    with (
        JobsClient(module_backend.address, module_backend.internal_token) as client,
        pytest.raises(CliError, match="no job id starts with"),
    ):
        resolve_job(client, prefix)
