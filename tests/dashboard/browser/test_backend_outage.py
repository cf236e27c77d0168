"""The pages through a backend outage: a job page opened while the backend is down recovers by itself once it is
back, and the jobs list says that what it shows is stale while the backend is unreachable."""

from __future__ import annotations

from typing import Any

from .conftest import Platform
from .helpers import wait_js

BANNER = "(() => { const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : ''; })()"


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
