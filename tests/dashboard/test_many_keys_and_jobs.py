"""Past the backend's page sizes, against a real backend and a real `tp-dashboard` process: a job with more metric
keys than one GetMetricSeries answer (1,000) shows every key, and the jobs feed follows a job that is not ended
however old it is (older than the newest 500 jobs it also polls)."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.backend import BackendProcess, auth
from support.dashboard import DashboardProcess, SseReader, own_stack
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_dashboard.backend import MAX_METRIC_KEYS, Backend
from trainingplatform_dashboard.feed import NEWEST_JOBS, JobsFeed
from trainingplatform_dashboard.settings import Settings
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings

KEYS = 1500
JOBS = 503


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    with own_stack(tmp_path_factory.mktemp("many")) as pair:
        yield pair


def logged_in(dashboard: DashboardProcess) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.url, timeout=60)
    assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
    return client


def logger_for(backend: BackendProcess, job_id: str, token: str, tmp_path: Path) -> TrainingLogger:
    return TrainingLogger(
        job_id,
        backend_address=backend.address,
        token=token,
        spool_dir=tmp_path / f"spool-{job_id}",
        settings=LoggerSettings(flush_interval_s=0.02),
    )


def job_with_keys(backend: BackendProcess, tmp_path: Path, keys: list[str]) -> str:
    """An ended job with one point (step 1, value = the key's index) of each key."""
    job_id, token = backend.create_job()
    logger = logger_for(backend, job_id, token, tmp_path)
    logger.update_status("RUNNING")
    for index, key in enumerate(keys):
        logger.log_metric(key, float(index), step=1)
    logger.update_status("COMPLETED")
    report = logger.close(timeout=60)
    assert report.pending_metrics == 0 and report.calls_pending == 0 and report.calls_failed == 0, report
    return job_id


def test_a_job_with_1500_keys_shows_every_key(stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path) -> None:
    backend, dashboard = stack
    # In key order, the 1,500th key is val/accuracy: the key metric of the jobs list, past the first 1,000.
    keys = [f"layer/{index:04d}" for index in range(KEYS - 1)] + ["val/accuracy"]
    job_id = job_with_keys(backend, tmp_path, keys)
    client = logged_in(dashboard)

    answer = client.get(f"/api/jobs/{job_id}/series", params={"max_points": "1"}).json()
    assert [series["key"] for series in answer["series"]] == keys, "the series stop at the first 1,000 keys"
    assert answer["series"][-1]["buckets"][0]["last"] == KEYS - 1
    assert answer["next_key"] == "" and answer["message"] == ""
    assert answer["last_sequence"] >= KEYS
    assert all(series["last_sequence"] >= answer["last_sequence"] for series in answer["series"])
    # Named keys past one backend call (1,000 keys a call) are all answered too.
    wanted = keys[-1100:]
    named = client.get(f"/api/jobs/{job_id}/series", params={"keys": ",".join(wanted), "max_points": "1"}).json()
    assert [series["key"] for series in named["series"]] == wanted

    expected = {"key": "val/accuracy", "value": KEYS - 1, "step": 1}
    assert client.get(f"/api/jobs/{job_id}").json()["job"]["latest_metric"] == expected
    listed = client.get("/api/jobs").json()["jobs"]
    assert next(job for job in listed if job["job_id"] == job_id)["latest_metric"] == expected


def test_a_job_with_more_keys_than_the_bound_says_which_are_left_out(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, dashboard = stack
    keys = [f"m/{index:05d}" for index in range(MAX_METRIC_KEYS + 1)]
    job_id = job_with_keys(backend, tmp_path, keys)
    answer = logged_in(dashboard).get(f"/api/jobs/{job_id}/series", params={"max_points": "1"}).json()
    assert [series["key"] for series in answer["series"]] == keys[:MAX_METRIC_KEYS]
    assert answer["next_key"] == keys[-1]
    assert f"at most {MAX_METRIC_KEYS}" in answer["message"] and repr(keys[-1]) in answer["message"]
    assert "more than" in dashboard.log_text()


def test_the_jobs_feed_pushes_the_status_of_a_job_older_than_the_newest_500(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, dashboard = stack
    oldest, token = backend.create_job(model="resnet50")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: backend.create_job(), range(JOBS - 1)))
    client = logged_in(dashboard)
    newest = client.get("/api/jobs").json()
    assert oldest not in {job["job_id"] for job in newest["jobs"]} and newest["next_page_token"]

    feed = SseReader(client, "/api/events/jobs")
    try:

        def pushed(status: str) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    event = feed.next(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    break
                assert event is not None, "the jobs feed ended"
                if event.event == "job" and event.json()["job_id"] == oldest and event.json()["status"] == status:
                    return
            raise AssertionError(f"the feed never pushed {status} of the oldest job")

        logger = logger_for(backend, oldest, token, tmp_path)
        logger.update_status("RUNNING")
        assert logger.flush(timeout=15)
        pushed("RUNNING")
        # Ended: it leaves the list of jobs not ended, and the feed reads it once more for its final status.
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
        pushed("COMPLETED")
    finally:
        feed.close()


def test_the_jobs_not_ended_that_a_poll_reads_are_capped_with_a_warning(
    stack: tuple[BackendProcess, DashboardProcess], caplog: pytest.LogCaptureFixture
) -> None:
    backend, _ = stack
    for _ in range(5):
        backend.create_job()  # pending: not ended

    async def polls() -> JobsFeed:
        client = Backend(
            Settings(backend_address=backend.address, data_dir=backend.data_dir, read_token=backend.read_token)
        )
        feed = JobsFeed(client, poll_interval_s=1, linger_s=1, max_events=100, max_unended=3)
        try:
            await feed.poll()
            await feed.poll()
        finally:
            await client.close()
        return feed

    with caplog.at_level(logging.WARNING, logger="trainingplatform_dashboard.feed"):
        feed = asyncio.run(polls())
    assert feed.unended_cut
    warnings = [record.getMessage() for record in caplog.records if "are not ended" in record.getMessage()]
    assert len(warnings) == 1, warnings  # once, not every poll
    assert "more than 3 jobs are not ended" in warnings[0]
    jobs = len(
        backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(page_size=1000), metadata=auth(backend.read_token)).jobs
    )
    assert len(feed.jobs) == min(jobs, NEWEST_JOBS), "the poll read more than the newest 500 and 3 jobs not ended"


def test_the_jobs_feed_keeps_the_latest_metric_of_the_jobs_read_last_only(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, _ = stack
    jobs = []
    for index in range(5):
        job_id, token = backend.create_job()
        logger = TrainingLogger(
            job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / f"spool-{index}"
        )
        logger.log_metric("train/loss", float(index), step=1)
        logger.close(timeout=15)
        jobs.append(job_id)

    async def read() -> list[dict[str, Any] | None]:
        client = Backend(
            Settings(backend_address=backend.address, data_dir=backend.data_dir, read_token=backend.read_token)
        )
        feed = JobsFeed(client, poll_interval_s=1, linger_s=1, max_events=100, max_latest=3)
        try:
            for job_id in jobs:  # one job after another (as pages of the jobs list, or job pages, read them)
                await feed.refresh_latest([(await client.get_job(job_id)).job])
            return [feed.latest(job_id) for job_id in jobs]
        finally:
            await client.close()

    latest = asyncio.run(read())
    assert latest[:2] == [None, None], "the cache keeps every job ever shown"
    assert [entry and entry["value"] for entry in latest[2:]] == [2.0, 3.0, 4.0]
