"""A live stream the browser gave up on: EventSource reconnects by itself after a dropped connection, but closes for
good on an answer that is not a stream (a restarted dashboard's 401, since sessions live in memory; a proxy's 502).
Every page then asks /api/session: a 401 means the session has ended, and the page says so and stops; anything
else is tried again, backing off to 10 s, until the stream is back. Before, the jobs and compare pages said
"Live updates interrupted; reconnecting…" for ever and never reconnected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.dashboard import DashboardProcess

from .conftest import PageProblems, Platform
from .helpers import create_through_api, fed_job, set_visibility, wait_js

pytestmark = pytest.mark.timeout(300)

BANNER = "(() => { const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : ''; })()"
SESSION_ENDED = f"{BANNER}.includes('Your session has ended')"


@pytest.mark.parametrize("where", ["jobs", "compare", "job"])
def test_a_page_says_the_session_has_ended_after_the_dashboard_restarts(
    chromium: Any, stack: Platform, problems: PageProblems, tmp_path: Path, where: str
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    other_id, other = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    other.update_status("RUNNING")
    path = {"jobs": "/", "compare": f"/compare?jobs={job_id},{other_id}", "job": f"/jobs/{job_id}"}[where]
    dashboard = DashboardProcess(stack.backend, tmp_path)
    dashboard.start()
    context = chromium.new_context()
    restarted: DashboardProcess | None = None
    try:
        page = context.new_page()
        problems.watch(page)
        streams = "/api/events/jobs" if where == "jobs" else "/events"
        opened: list[str] = []
        page.on("request", lambda request: opened.append(request.url) if streams in request.url else None)
        page.goto(dashboard.login_url)
        page.goto(f"{dashboard.url}{path}")
        if where == "compare":  # one stream per running job
            for _ in range(400):
                if len(opened) >= 2:
                    break
                page.wait_for_timeout(50)
            assert len(opened) >= 2, opened
        else:
            wait_js(page, "document.body.dataset.live === 'true'")
        page.wait_for_timeout(1000)
        dashboard.stop()
        restarted = DashboardProcess(stack.backend, tmp_path, port=dashboard.port)
        restarted.start()
        text = wait_js(page, f"{SESSION_ENDED} && {BANNER}", timeout=25)
        assert "Your session has ended" in text, text
        assert page.evaluate("document.body.dataset.live") == "false"
        # It has stopped: no stream is asked for again.
        seen = len(opened)
        page.wait_for_timeout(3000)
        assert len(opened) == seen, opened[seen:]
    finally:
        context.close()
        if restarted is not None:
            restarted.close()
        dashboard.close()
        for each in (logger, other):
            each.update_status("COMPLETED")
            each.close(timeout=15)


def test_the_jobs_page_retries_a_stream_refused_by_a_proxy_until_it_is_back(page: Any, stack: Platform) -> None:
    wait_js(page, "document.body.dataset.live === 'true'")
    refused: list[str] = []

    def bad_gateway(route: Any) -> None:
        refused.append(route.request.url)
        route.fulfill(status=502, content_type="text/html", body="<h1>502 Bad Gateway</h1>")

    page.route("**/api/events/jobs", bad_gateway)
    # The stream is closed and opened again (as a tab put in the background and back): the proxy refuses it.
    set_visibility(page, "hidden")
    set_visibility(page, "visible")
    text = wait_js(page, f"{BANNER}.includes('trying again') && {BANNER}", timeout=15)
    assert "Live updates interrupted" in text, text
    page.wait_for_timeout(3500)
    assert len(refused) >= 2, f"the stream was not tried again: {refused}"
    assert page.evaluate("document.body.dataset.live") == "false"
    page.unroute("**/api/events/jobs")
    wait_js(page, "document.body.dataset.live === 'true'", timeout=25)
    assert page.evaluate(BANNER) == ""
    # The stream works again: a new job appears in the list by itself.
    job = create_through_api(page, stack, display_name="after the proxy came back")
    wait_js(page, f"document.querySelector('tr[data-job-id=\"{job['job_id']}\"]')", timeout=15)
