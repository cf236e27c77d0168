"""The jobs page and the compare picker with more jobs than one page of /api/jobs (527: the newest 500 first)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from trainingplatform_sdk import TrainingLogger

from .conftest import Platform
from .helpers import wait_js

JOBS = 527


@pytest.fixture(scope="module")
def jobs(stack: Platform) -> list[tuple[str, str]]:
    """527 undispatched jobs, oldest first: (job id, telemetry token)."""
    created = [stack.backend.create_job() for _ in range(5)]
    with ThreadPoolExecutor(8) as pool:
        created += list(pool.map(lambda _: stack.backend.create_job(), range(JOBS - 5)))
    return created


@pytest.fixture(scope="module")
def job_ids(jobs: list[tuple[str, str]]) -> list[str]:
    return [job_id for job_id, _ in jobs]


def count_text(page: Any) -> str:
    return str(page.locator("#job-count").text_content() or "")


def test_the_list_says_it_is_cut_and_loads_the_older_jobs(page: Any, stack: Platform, job_ids: list[str]) -> None:
    page.goto(stack.url)
    wait_js(page, "document.querySelectorAll('#jobs-body tr[data-job-id]').length >= 500")
    text = count_text(page)
    assert text.startswith("Showing 500 jobs"), f"the list of 527 jobs does not say it is cut: {text!r}"
    assert page.locator("#load-more").is_visible()
    page.locator("#load-more").click()
    wait_js(page, f"document.querySelectorAll('#jobs-body tr[data-job-id]').length === {JOBS}")
    assert count_text(page) == f"{JOBS} jobs"
    assert not page.locator("#load-more").is_visible()
    assert page.locator(f'#jobs-body tr[data-job-id="{job_ids[0]}"]').count() == 1


def test_a_search_finds_a_job_older_than_the_first_page(page: Any, stack: Platform, job_ids: list[str]) -> None:
    oldest = job_ids[0]
    page.goto(stack.url)
    wait_js(page, "document.querySelectorAll('#jobs-body tr[data-job-id]').length >= 500")
    page.locator("#filter-q").fill(oldest[:13])
    row = page.locator(f'#jobs-body tr[data-job-id="{oldest}"]')
    row.wait_for(state="visible")
    assert page.locator("#jobs-body tr[data-job-id]").count() == 1
    assert count_text(page) == "1 job"


def test_the_compare_picker_loads_the_older_jobs(page: Any, stack: Platform, job_ids: list[str]) -> None:
    page.goto(f"{stack.url}/compare")
    summary = page.locator("#compare-picker summary, details summary").first
    summary.wait_for()
    text = str(summary.text_content())
    assert "older ones not loaded" in text, f"the picker of 527 jobs does not say it is cut: {text!r}"
    page.locator("#compare-load-more").click()
    wait_js(page, f"document.querySelectorAll('#compare-picker tbody tr').length === {JOBS}")
    assert str(summary.text_content()) == f"Pick jobs ({JOBS})"


def test_a_job_older_than_the_first_page_updates_live_once_loaded(
    page: Any, stack: Platform, jobs: list[tuple[str, str]], tmp_path: Path
) -> None:
    oldest, token = jobs[0]
    page.goto(stack.url)
    wait_js(page, "document.querySelectorAll('#jobs-body tr[data-job-id]').length >= 500")
    page.locator("#load-more").click()
    row = page.locator(f'#jobs-body tr[data-job-id="{oldest}"]')
    row.wait_for()
    status = f"document.querySelector('#jobs-body tr[data-job-id=\"{oldest}\"]')?.dataset.status"
    assert row.get_attribute("data-status") == "PENDING"
    logger = TrainingLogger(oldest, backend_address=stack.backend.address, token=token, spool_dir=tmp_path / "spool")
    try:
        logger.update_status("RUNNING")
        assert logger.flush(timeout=15)
        # The jobs feed follows every job not ended, not only the newest 500: the row changes without a reload.
        wait_js(page, f"{status} === 'RUNNING'")
    finally:
        logger.update_status("COMPLETED")
        logger.close(timeout=15)
    wait_js(page, f"{status} === 'COMPLETED'")
