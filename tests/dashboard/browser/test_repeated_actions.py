"""What a page does when an action is repeated or goes stale: a create clicked or retried twice makes one job, a
double-click on "Cancel job" does not confirm, a cancel refused because the job ended (or whose answer is lost)
shows the job as it is, a change after a login in another tab (a new session, a new CSRF token) still goes through,
and another 403 is shown, not retried."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from trainer_service.trainer_process import wait_until

from .conftest import Platform
from .helpers import create_through_api, fed_job, shot, wait_js

pytestmark = pytest.mark.timeout(300)

_QUICK = json.dumps({"extra": {"fake_batches": 2, "fake_batch_s": 0.01}})


def _jobs_named(page: Any, stack: Platform, name: str) -> list[dict[str, Any]]:
    answer = page.request.get(f"{stack.url}/api/jobs", params={"q": name}).json()
    return [job for job in answer["jobs"] if job["display_name"] == name]


def _fill_form(page: Any, stack: Platform, name: str) -> None:
    page.goto(f"{stack.url}/new")
    page.fill("#model", "resnet10t")
    page.fill("#dataset", "digits")
    page.fill("#epochs", "1")
    page.fill("#display_name", name)
    page.fill("#advanced_config", _QUICK)


def test_the_create_button_waits_for_the_frameworks_list(page: Any, stack: Platform) -> None:
    """Before, "Create job" was live while the framework select still said "Loading…" (value ""), and a click then
    sent a job with no framework: under load the form's first click failed that way."""
    held: list[Any] = []
    page.route("**/api/frameworks", lambda route: held.append(route))
    page.goto(f"{stack.url}/new")
    wait_until(lambda: bool(held), 30, "the page did not ask for the frameworks")
    assert page.locator("#framework").input_value() == ""
    assert page.evaluate("document.querySelector('#submit').disabled"), "Create is live before a framework is listed"
    held[0].continue_()
    wait_js(page, "!document.querySelector('#submit').disabled")
    assert page.locator("#framework").input_value() == "timm"


@pytest.mark.timeout(120)
def test_the_create_button_stays_disabled_while_the_new_jobs_page_loads(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    """The job's page never comes (its navigation is stopped): the form stays as it was while it loads."""
    opened: list[str] = []

    def stop_the_job_page(route: Any) -> None:
        if route.request.resource_type != "document":
            route.continue_()
            return
        opened.append(route.request.url)
        route.abort("aborted")

    page.route("**/jobs/*", stop_the_job_page)
    _fill_form(page, stack, "created once")
    page.click("#submit", no_wait_after=True)
    for _ in range(200):
        if opened:
            break
        page.wait_for_timeout(50)
    assert opened, "the form did not open the job's page"
    page.wait_for_timeout(300)  # the handler's `finally` has run
    assert page.url.endswith("/new"), page.url
    assert page.evaluate("document.querySelector('#submit').disabled"), "the button is live again: a click creates"
    shot(page, tmp_path, "creating")
    assert len(_jobs_named(page, stack, "created once")) == 1


def test_a_create_retried_after_a_lost_answer_gives_the_same_job(page: Any, stack: Platform) -> None:
    """The first answer never reaches the page (the job was created): the second click sends the same request id
    and gets that job instead of a second one."""
    lost: list[str] = []

    def lose_the_first_answer(route: Any) -> None:
        if route.request.method != "POST" or lost:
            route.continue_()
            return
        response = route.fetch()
        lost.append(response.json()["job"]["job_id"])
        route.abort()

    page.route("**/api/jobs", lose_the_first_answer)
    _fill_form(page, stack, "retried once")
    page.click("#submit")
    wait_js(page, "document.querySelector('#form-error').textContent.length > 0")
    assert lost, "the first create did not reach the dashboard"
    page.click("#submit")
    page.wait_for_url(f"**/jobs/{lost[0]}")
    assert [job["job_id"] for job in _jobs_named(page, stack, "retried once")] == lost


def test_a_double_click_on_cancel_does_not_confirm_it(page: Any, stack: Platform, tmp_path: Path) -> None:
    job = create_through_api(
        page,
        stack,
        display_name="double-clicked",
        advanced_config={"extra": {"fake_batches": 1000, "fake_batch_s": 0.1}},
    )
    page.goto(f"{stack.url}/jobs/{job['job_id']}")
    wait_js(page, "document.body.dataset.status === 'RUNNING'", 60)
    page.dblclick("#cancel-job")
    page.wait_for_timeout(1000)
    assert page.locator("#cancel-job").inner_text() == "Click again to cancel"
    assert stack.backend.job_status(job["job_id"]) == "RUNNING"
    shot(page, tmp_path, "armed")
    page.click("#cancel-job")
    wait_js(page, "document.body.dataset.status === 'CANCELLED'", 30)
    wait_until(lambda: stack.backend.job_status(job["job_id"]) == "CANCELLED", 30, "the stored status CANCELLED")


def test_a_cancel_refused_because_the_job_ended_shows_the_job_as_it_is(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    # The page hears nothing live: it learns that the job ended only from the refused cancel.
    page.route("**/events*", lambda route: route.abort())
    try:
        logger.update_status("running")
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, "document.body.dataset.status === 'RUNNING'")
        logger.update_status("completed")
        logger.flush(10)
    finally:
        logger.close()
    wait_until(lambda: stack.backend.job_status(job_id) == "COMPLETED", 30, "the stored status COMPLETED")
    assert page.evaluate("document.body.dataset.status") == "RUNNING"
    page.click("#cancel-job")
    page.wait_for_timeout(600)
    page.click("#cancel-job")
    wait_js(page, "document.body.dataset.status === 'COMPLETED'")
    wait_js(page, "document.querySelector('#cancel-note').textContent.includes('Cancel failed')")
    assert page.locator("#cancel-job").is_hidden()
    assert "COMPLETED" in page.locator("#status-timeline").inner_text()
    shot(page, tmp_path, "refused-cancel")


def _arm_and_confirm_cancel(page: Any, stack: Platform, job_id: str) -> None:
    page.goto(f"{stack.url}/jobs/{job_id}")
    wait_js(page, "document.body.dataset.status === 'RUNNING'")
    page.click("#cancel-job")
    page.wait_for_timeout(600)
    page.click("#cancel-job")


def test_a_cancel_whose_answer_is_lost_says_so_and_shows_the_job_as_it_is(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    """The cancel reaches the backend, but its answer never reaches the page (a network error): the page says the
    cancel failed and reads the job again, which shows that it was cancelled."""
    job_id, logger = fed_job(stack, tmp_path)
    # The page hears nothing live: it learns what the cancel did only by reading the job again.
    page.route("**/events*", lambda route: route.abort())
    answered: list[int] = []

    def lose_the_answer(route: Any) -> None:
        answered.append(route.fetch().status)
        route.abort("internetdisconnected")

    page.route("**/api/jobs/*/cancel", lose_the_answer)
    with logger:
        logger.update_status("running")
        logger.flush(10)
        _arm_and_confirm_cancel(page, stack, job_id)
        wait_js(page, "document.querySelector('#cancel-note').textContent.includes('Cancel failed')")
        assert answered == [200], answered
        wait_js(page, "document.body.dataset.status === 'CANCELLED'")
        assert page.locator("#cancel-job").is_hidden()
        assert "CANCELLED" in page.locator("#status-timeline").inner_text()
        shot(page, tmp_path, "lost-cancel")


def test_a_403_that_is_not_the_csrf_refusal_is_shown_and_not_retried(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    """Only the dashboard's CSRF refusal means a stale token: any other 403 (here a proxy's, in the API's own
    error shape) is shown as it is, and the change is not sent again."""
    job_id, logger = fed_job(stack, tmp_path)
    sent: list[str] = []

    def refuse(route: Any) -> None:
        sent.append(route.request.url)
        error = {"code": "PERMISSION_DENIED", "message": "this proxy does not let you cancel jobs", "field": None}
        route.fulfill(status=403, content_type="application/json", body=json.dumps({"error": error}))

    page.route("**/api/jobs/*/cancel", refuse)
    with logger:
        logger.update_status("running")
        logger.flush(10)
        _arm_and_confirm_cancel(page, stack, job_id)
        note = wait_js(page, "document.querySelector('#cancel-note').textContent")
        assert "Cancel failed" in note and "this proxy does not let you cancel jobs" in note, note
        assert len(sent) == 1, f"the refused cancel was sent {len(sent)} times"
        assert stack.backend.job_status(job_id) == "RUNNING"


def test_a_change_after_a_login_in_another_tab_goes_through(page: Any, stack: Platform) -> None:
    # A first change (refused for its epochs) reads and keeps the session's CSRF token.
    _fill_form(page, stack, "after a new login")
    page.fill("#epochs", "0")
    page.click("#submit")
    wait_js(page, "document.querySelector('#epochs-error').textContent.length > 0")
    # Another tab logs in again: a new session cookie, whose CSRF token the first tab does not have.
    other = page.context.new_page()
    assert stack.dashboard is not None
    other.goto(stack.dashboard.login_url)
    other.close()
    page.fill("#epochs", "1")
    page.click("#submit")
    page.wait_for_url("**/jobs/*")
    page.locator("#job-title").wait_for()
    assert page.locator("#job-title").inner_text() == "after a new login"
