"""Sessions in the browser: a job page whose session expires while the job streams says so at once and its charts
stop; a deep link opened without a session is where the login lands."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from support.dashboard import DashboardProcess

from .conftest import PageProblems, Platform
from .helpers import fed_job, total_points, wait_js

TTL_S = 6.0


def test_the_job_page_stops_and_says_so_when_the_session_expires(
    chromium: Any, stack: Platform, problems: PageProblems, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    stop = threading.Event()

    def train() -> None:  # 100 points a second until the test ends
        step = 0
        while not stop.is_set():
            step += 1
            logger.log_metric("train/loss", 1.0 / step, step=step)
            time.sleep(0.01)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    dashboard = DashboardProcess(stack.backend, tmp_path, {"TP_DASHBOARD_SESSION_TTL_S": str(TTL_S)})
    dashboard.start()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        problems.watch(page)
        logged_in_at = time.monotonic()
        page.goto(dashboard.login_url)
        page.goto(f"{dashboard.url}/jobs/{job_id}")
        wait_js(page, "document.body.dataset.live === 'true'")
        first = total_points(page, "train/loss")
        wait_js(page, f"Number(document.querySelector('figure.chart')?.dataset.totalPoints) > {first}")
        banner = page.locator("#banner")
        wait_js(
            page,
            "(() => { const b = document.getElementById('banner'); return b && !b.hidden && "
            "b.textContent.includes('Your session has ended'); })()",
            timeout=TTL_S + 15,
        )
        late = time.monotonic() - logged_in_at - TTL_S
        assert late < 2.0, f"the session-ended banner came {late:.1f} s after the session expired"
        assert page.evaluate("document.body.dataset.live") == "false"
        shown = total_points(page, "train/loss")
        page.wait_for_timeout(1500)
        assert total_points(page, "train/loss") == shown, "the charts kept updating after the session ended"
        assert "Your session has ended" in str(banner.text_content())
    finally:
        context.close()
        dashboard.close()
        stop.set()
        trainer.join(5)
        logger.update_status("COMPLETED")
        logger.close(timeout=15)


def test_a_deep_link_opened_before_the_login_is_where_the_login_lands(
    chromium: Any, stack: Platform, problems: PageProblems
) -> None:
    job_id, _ = stack.backend.create_job()
    assert stack.dashboard is not None
    context = chromium.new_context()
    try:
        page = context.new_page()
        problems.watch(page)
        response = page.goto(f"{stack.url}/jobs/{job_id}")
        assert response is not None and response.status == 401
        page.goto(stack.dashboard.login_url)
        assert page.url == f"{stack.url}/jobs/{job_id}", f"the login landed on {page.url}"
        assert wait_js(page, "document.getElementById('job-title')?.textContent") == job_id
        page.goto(f"{stack.dashboard.login_url}&next=//evil.example")
        assert page.url == f"{stack.url}/"
    finally:
        context.close()


def test_the_header_logs_out_and_the_session_ends(chromium: Any, stack: Platform) -> None:
    job_id, _ = stack.backend.create_job()
    assert stack.dashboard is not None
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.goto(stack.dashboard.login_url)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, "document.body.dataset.live === 'true'")
        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(f"{stack.url}/")
        assert "not logged in" in page.content()
        assert page.request.get(f"{stack.url}/api/jobs").status == 401
    finally:
        context.close()
