"""Many dashboard tabs in one browser: Chromium opens at most 6 HTTP/1.1 connections to a server, and every job
page follows its job over an EventSource that holds one. A hidden page closes its stream and reopens it, from the
last event it received, when it is shown again, so any number of tabs keep loading and answering."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from support.dashboard import DashboardProcess

from .conftest import PageProblems, Platform
from .helpers import fed_job, set_visibility, shot, total_points, wait_js

pytestmark = pytest.mark.timeout(300)

KEY = "train/loss"
BANNER = "(() => { const b = document.getElementById('banner'); return b && !b.hidden ? b.textContent : ''; })()"


def test_eight_job_tabs_load_and_cancel_while_the_others_are_hidden(
    page: Any, stack: Platform, problems: PageProblems, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as loggers:
        job_ids = []
        for _ in range(8):
            job_id, logger = fed_job(stack, tmp_path)
            loggers.enter_context(logger)
            logger.update_status("running")
            logger.log_metric(KEY, 1.0, step=1, epoch=0)
            logger.flush(10)
            job_ids.append(job_id)
        tabs = [page]
        for _ in job_ids[1:]:
            tab = page.context.new_page()
            problems.watch(tab)
            tabs.append(tab)
        for n, (tab, job_id) in enumerate(zip(tabs, job_ids, strict=True)):
            tab.goto(f"{stack.url}/jobs/{job_id}")
            wait_js(tab, "document.body.dataset.live === 'true'")
            if n < len(tabs) - 1:
                set_visibility(tab, "hidden")  # switched away from: its stream closes
                wait_js(tab, "document.body.dataset.live === 'paused'")
        last = tabs[-1]
        wait_js(last, "document.body.dataset.status === 'RUNNING'")
        last.click("#cancel-job")
        assert last.locator("#cancel-job").inner_text() == "Click again to cancel"
        last.wait_for_timeout(700)  # a second click sooner is taken for a double-click
        last.click("#cancel-job")
        wait_js(last, "document.body.dataset.status === 'CANCELLED'", 20)
        assert stack.backend.job_status(job_ids[-1]) == "CANCELLED"
        assert "failed" not in str(last.locator("#cancel-note").text_content())
        shot(last, tmp_path, "eighth-tab")


def test_a_tab_shown_again_gets_the_points_it_missed_once(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    with logger:
        logger.update_status("running")
        for step in range(1, 51):
            logger.log_metric(KEY, 1.0 / step, step=step, epoch=0)
            logger.log_message(f"line {step}")
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{KEY}\"]')?.dataset.totalPoints === '50'")
        wait_js(page, "document.body.dataset.live === 'true'")
        set_visibility(page, "hidden")
        wait_js(page, "document.body.dataset.live === 'paused'")
        for step in range(51, 121):
            logger.log_metric(KEY, 1.0 / step, step=step, epoch=0)
            logger.log_message(f"line {step}")
        logger.flush(10)
        page.wait_for_timeout(1000)
        assert total_points(page, KEY) == 50, "a hidden page kept following its job"
        set_visibility(page, "visible")
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{KEY}\"]')?.dataset.totalPoints === '120'")
        wait_js(page, "document.body.dataset.live === 'true'")
        for step in range(121, 131):
            logger.log_metric(KEY, 1.0 / step, step=step, epoch=0)
        logger.flush(10)
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{KEY}\"]')?.dataset.totalPoints === '130'")
        page.wait_for_timeout(500)
        assert total_points(page, KEY) == 130
        lines = page.evaluate("[...document.querySelectorAll('#logs li')].map((li) => li.dataset.sequence)")
        assert len(lines) == len(set(lines)) == 120, lines
    shot(page, tmp_path, "shown-again")


def test_a_system_page_past_the_sessions_live_limit_says_why_and_a_hidden_tab_frees_its_slot(
    chromium: Any, stack: Platform, problems: PageProblems, tmp_path: Path
) -> None:
    dashboard = DashboardProcess(stack.backend, tmp_path, {"TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION": "1"})
    dashboard.start()
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    try:
        first, second = context.new_page(), context.new_page()
        for tab in (first, second):
            problems.watch(tab)
        first.goto(dashboard.login_url)
        job_ids = [stack.backend.create_job()[0] for _ in range(2)]
        first.goto(f"{dashboard.url}/jobs/{job_ids[0]}")
        wait_js(first, "document.body.dataset.live === 'true'")
        second.goto(f"{dashboard.url}/jobs/{job_ids[1]}/system")
        text = wait_js(second, BANNER)
        assert "TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION" in text, f"the refusal does not say why: {text!r}"
        assert second.evaluate("document.body.dataset.live") == "false"
        set_visibility(first, "hidden")  # its stream closes, and with it the session's live job
        wait_js(first, "document.body.dataset.live === 'paused'")
        second.reload()
        wait_js(second, "document.body.dataset.live === 'true'")
        assert not second.evaluate(BANNER)
    finally:
        context.close()
        dashboard.close()


def test_a_request_that_gets_no_connection_fails_and_says_what_to_do(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, _ = stack.backend.create_job()
    page.goto(f"{stack.url}/jobs/{job_id}")
    wait_js(page, "document.body.dataset.live === 'true'")
    # Five more streams, as five more tabs would hold: with the page's own, every connection Chromium opens to the
    # dashboard is taken.
    page.evaluate("window.held = [1, 2, 3, 4, 5].map(() => new EventSource('/api/events/jobs'))")
    page.click("#cancel-job")
    page.wait_for_timeout(700)
    page.click("#cancel-job")
    note = wait_js(page, "document.getElementById('cancel-note')?.textContent", timeout=30)
    assert "did not answer" in note and "tabs" in note, note
    page.evaluate("window.held.forEach((source) => source.close())")
    shot(page, tmp_path, "timed-out")


def test_a_hidden_jobs_list_closes_its_stream_and_is_whole_again_when_shown(page: Any, stack: Platform) -> None:
    wait_js(page, "document.body.dataset.live === 'true'")
    set_visibility(page, "hidden")
    wait_js(page, "document.body.dataset.live === 'paused'")
    job_id, _ = stack.backend.create_job()
    page.wait_for_timeout(2000)
    assert page.locator(f'#jobs-body tr[data-job-id="{job_id}"]').count() == 0, "a hidden list kept following"
    set_visibility(page, "visible")
    wait_js(page, "document.body.dataset.live === 'true'")
    page.locator(f'#jobs-body tr[data-job-id="{job_id}"]').wait_for()
