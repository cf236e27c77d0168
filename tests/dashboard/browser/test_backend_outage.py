"""The pages through a backend outage: a job or system page opened while the backend is down recovers by itself
once it is back, an open one says that its live updates are paused while the backend is unreachable (its status
marked as the last known) and follows again once it is back, and the jobs list says that what it shows is stale
while the backend is unreachable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import Platform
from .helpers import fed_job, set_visibility, total_points, wait_js

pytestmark = pytest.mark.timeout(300)

STATUS = "document.getElementById('job-status')"
BANNER = "(() => { const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : ''; })()"


def running_job(stack: Platform, tmp_path: Path, key: str) -> tuple[str, Any]:
    """A RUNNING job with 10 points of `key` delivered, and its open logger (the caller closes it)."""
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("running")
    for step in range(1, 11):
        logger.log_metric(key, float(step), step=step)
    logger.flush(10)
    return job_id, logger


def test_a_job_page_opened_while_the_backend_is_down_recovers_by_itself(page: Any, stack: Platform) -> None:
    job_id, _ = stack.backend.create_job()
    stack.backend.stop()
    try:
        page.goto(f"{stack.url}/jobs/{job_id}")
        page.locator(".error-text").first.wait_for()
        assert "unreachable" in str(page.locator(".error-text").first.text_content())
    finally:
        stack.backend.restart()
    title = wait_js(page, "document.getElementById('job-title')?.textContent", timeout=20)
    assert title == job_id, "the job page stayed on the backend error after the backend came back"
    wait_js(page, "document.body.dataset.live === 'true'")


@pytest.mark.parametrize("suffix", ["", "/system"], ids=["job", "system"])
def test_an_open_page_says_when_the_backend_is_unreachable_and_follows_again_once_it_is_back(
    page: Any, stack: Platform, tmp_path: Path, suffix: str
) -> None:
    key = "system/cpu_percent" if suffix else "train/loss"
    job_id, logger = running_job(stack, tmp_path, key)
    with logger:
        page.goto(f"{stack.url}/jobs/{job_id}{suffix}")
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '10'")
        wait_js(page, "document.body.dataset.live === 'true'")
        stack.backend.stop()
        try:
            text = wait_js(page, BANNER, timeout=15)
            assert "backend is unreachable" in text and "paused" in text, text
            assert page.evaluate("document.body.dataset.live") == "false"
            # The status shown is only the last one heard of, and the page says so beside it.
            wait_js(page, f"{STATUS}.dataset.stale === 'true'", timeout=5)
            status = page.evaluate(f"{STATUS}.textContent")
            assert "RUNNING" in status and "last known" in status and "connection lost" in status, status
        finally:
            stack.backend.restart()
        wait_js(page, "document.body.dataset.live === 'true'", timeout=30)
        assert not page.evaluate(BANNER), "the banner stayed after the backend came back"
        wait_js(page, f"{STATUS}.dataset.stale === 'false'", timeout=5)
        assert page.evaluate(f"{STATUS}.textContent") == "RUNNING"
        for step in range(11, 21):
            logger.log_metric(key, float(step), step=step)
        logger.flush(30)
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '20'")
        page.wait_for_timeout(500)
        assert total_points(page, key) == 20


def test_a_tab_shown_again_while_the_backend_is_down_follows_once_it_is_back(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    key = "train/loss"
    job_id, logger = running_job(stack, tmp_path, key)
    with logger:
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, "document.body.dataset.live === 'true'")
        set_visibility(page, "hidden")
        wait_js(page, "document.body.dataset.live === 'paused'")
        stack.backend.stop()
        try:
            set_visibility(page, "visible")  # its stream is refused (503) while the backend is down
            text = wait_js(page, BANNER, timeout=15)
            assert "interrupted" in text, text
        finally:
            stack.backend.restart()
        wait_js(page, "document.body.dataset.live === 'true'", timeout=30)
        for step in range(11, 21):
            logger.log_metric(key, float(step), step=step)
        logger.flush(30)
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '20'")
        assert not page.evaluate(BANNER)


@pytest.mark.parametrize("suffix", ["", "/system"], ids=["job", "system"])
def test_a_page_opened_while_the_backend_is_down_retries(page: Any, stack: Platform, suffix: str) -> None:
    job_id, _ = stack.backend.create_job()
    stack.backend.stop()
    try:
        page.goto(f"{stack.url}/jobs/{job_id}{suffix}")
        wait_js(page, "document.body.dataset.retrying === 'true'", timeout=15)
        assert "unreachable" in str(page.locator(".error-text").first.text_content())
    finally:
        stack.backend.restart()
    wait_js(page, "document.body.dataset.live === 'true'", timeout=30)
    assert not page.evaluate("document.body.dataset.retrying")


def test_the_jobs_list_says_it_is_stale_while_the_backend_is_unreachable(page: Any, stack: Platform) -> None:
    job_id, _ = stack.backend.create_job()
    page.goto(stack.url)
    page.locator(f'#jobs-body tr[data-job-id="{job_id}"]').wait_for()
    stack.backend.stop()
    try:
        text = wait_js(page, BANNER, timeout=15)
        assert "unreachable since" in text, f"the list of cached jobs says nothing of the outage: {text!r}"
        assert page.evaluate("document.body.dataset.stale") == "true"
        assert page.locator(f'#jobs-body tr[data-job-id="{job_id}"]').count() == 1, "the last known jobs stay"
        page.reload()  # a page opened during the outage says so too
        text = wait_js(page, BANNER, timeout=15)
        assert "unreachable" in text, text
    finally:
        stack.backend.restart()
    wait_js(page, "document.body.dataset.stale === 'false'", timeout=20)
    page.locator(f'#jobs-body tr[data-job-id="{job_id}"]').wait_for()
    assert not page.evaluate(BANNER)
