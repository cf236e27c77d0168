"""The jobs list past one page: every job reachable through /api/jobs's page tokens, and a search that finds
jobs older than the first page, against a real backend and a real `tp-dashboard` process."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess, own_stack

JOBS = 527


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, DashboardProcess, list[str]]]:
    """A backend holding 527 jobs (oldest first in the list) and a dashboard in front of it."""
    with own_stack(tmp_path_factory.mktemp("many-jobs")) as (backend, dashboard):
        ids = [backend.create_job()[0] for _ in range(20)]  # the oldest, in creation order
        with ThreadPoolExecutor(8) as pool:
            ids += [job_id for job_id, _ in pool.map(lambda _: backend.create_job(), range(JOBS - 20))]
        yield backend, dashboard, ids


def logged_in(dashboard: DashboardProcess) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.url, timeout=60)
    assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
    return client


def every_page(client: httpx.Client, params: dict[str, str]) -> tuple[list[dict[str, Any]], int]:
    """Follows next_page_token to the end: (the jobs, the number of pages)."""
    jobs: list[dict[str, Any]] = []
    pages = 0
    token = ""
    while True:
        response = client.get("/api/jobs", params={**params, **({"page_token": token} if token else {})})
        assert response.status_code == 200, response.text
        answer = response.json()
        jobs += answer["jobs"]
        pages += 1
        token = answer.get("next_page_token") or ""
        if not token:
            return jobs, pages
        assert pages < 100, "the page tokens never end"


def test_every_job_is_reachable_page_by_page(many: tuple[BackendProcess, DashboardProcess, list[str]]) -> None:
    _, dashboard, ids = many
    client = logged_in(dashboard)
    first = client.get("/api/jobs").json()
    assert len(first["jobs"]) == 500
    assert first.get("next_page_token"), "the first page of 527 jobs says nothing of the 27 older ones"
    jobs, pages = every_page(client, {})
    assert pages == 2
    listed = [job["job_id"] for job in jobs]
    assert len(listed) == len(set(listed)) == JOBS
    assert set(listed) == set(ids)
    # Small pages, filtered server-side by status, reach every job too.
    jobs, pages = every_page(client, {"limit": "100", "status": "PENDING"})
    assert pages == 6 and {job["job_id"] for job in jobs} == set(ids)


def test_a_search_finds_a_job_older_than_the_first_page(
    many: tuple[BackendProcess, DashboardProcess, list[str]],
) -> None:
    _, dashboard, ids = many
    client = logged_in(dashboard)
    oldest = ids[0]
    answer = client.get("/api/jobs", params={"q": oldest[:13].upper()}).json()
    assert [job["job_id"] for job in answer["jobs"]] == [oldest], "a search misses a job older than the newest 500"
    # A search that matches many jobs pages too, and resumes within a backend page: nothing missed, nothing twice.
    letter = "a"
    matching = {job_id for job_id in ids if letter in job_id}
    jobs, pages = every_page(client, {"q": letter, "limit": "7"})
    listed = [job["job_id"] for job in jobs]
    assert len(listed) == len(set(listed))
    assert set(listed) == matching
    assert pages >= len(matching) // 7


def test_a_bad_page_token_or_limit_is_refused(many: tuple[BackendProcess, DashboardProcess, list[str]]) -> None:
    _, dashboard, _ = many
    client = logged_in(dashboard)
    for params in ({"page_token": "not-a-token"}, {"limit": "0"}, {"limit": "100000"}):
        response = client.get("/api/jobs", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "INVALID_ARGUMENT"
