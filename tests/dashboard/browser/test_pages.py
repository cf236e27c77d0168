"""The dashboard's pages in a real Chromium against real processes (backend, fake-adapter trainer, dashboard).

Jobs that must train come from the trainer (created through the dashboard's API, dispatched by the backend);
jobs whose telemetry a test must control exactly are created undispatched and fed with the SDK's TrainingLogger.
Every test saves a screenshot in its tmp_path.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from trainer_service.trainer_process import wait_until

from .conftest import Platform
from .helpers import chart, create_through_api, fed_job, shot, total_points, wait_js

pytestmark = pytest.mark.timeout(300)


def test_jobs_list_shows_a_job_created_through_the_api_and_follows_its_status(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    assert page.locator("h1").inner_text() == "Jobs"
    job = create_through_api(page, stack, display_name="live status job")
    row = page.locator(f'tr[data-job-id="{job["job_id"]}"]')
    # The row appears without a reload (the jobs event stream), then follows the job to its end.
    row.wait_for(timeout=10_000)
    assert row.locator("td.name a").inner_text() == "live status job"
    assert row.locator("td").nth(3).inner_text() == "timm"
    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = row.get_attribute("data-status")
        seen.add(status)
        if status == "COMPLETED":
            break
        page.wait_for_timeout(100)
    assert "COMPLETED" in seen, f"statuses seen: {seen}\n{stack.logs()}"
    assert seen & {"PENDING", "QUEUED", "RUNNING"}, f"only the final status was seen: {seen}"
    assert row.locator(".status").inner_text() == "COMPLETED"
    assert re.fullmatch(r"(train|val)/\S+ [-\d.e]+ @ \d+", row.locator("td.metric").inner_text())  # latest metric
    shot(page, tmp_path, "jobs")

    # Filters and search narrow the list.
    page.select_option("#filter-status", "FAILED")
    wait_js(page, "!document.querySelector('tr[data-job-id]')")
    page.select_option("#filter-status", "")
    page.fill("#filter-q", "no such name")
    wait_js(page, "!document.querySelector('tr[data-job-id]')")
    page.fill("#filter-q", "live status")
    row.wait_for()


def test_job_page_draws_a_chart_that_grows_while_the_job_trains(page: Any, stack: Platform, tmp_path: Path) -> None:
    job = create_through_api(
        page, stack, display_name="growing chart", advanced_config={"extra": {"fake_batches": 40, "fake_batch_s": 0.1}}
    )
    page.goto(f"{stack.url}/jobs/{job['job_id']}")
    key = "train/batch_loss"
    chart(page, key).wait_for(timeout=30_000)
    counts = [total_points(page, key)]
    deadline = time.monotonic() + 60
    while page.locator("#job-status .status").inner_text() != "COMPLETED" and time.monotonic() < deadline:
        page.wait_for_timeout(300)
        counts.append(total_points(page, key))
    assert page.locator("#job-status .status").inner_text() == "COMPLETED", stack.logs()
    page.wait_for_timeout(500)
    counts.append(total_points(page, key))
    growth = sorted(set(counts))
    assert len(growth) >= 3, f"the chart did not grow while the job trained: {counts}"
    assert counts == sorted(counts)
    assert counts[-1] == 80  # 2 epochs x 40 batches, each once
    # Drawn with labelled axes and a legend; grouped by prefix.
    assert page.locator('section.chart-section[data-prefix="train"] h3').inner_text() == "train/"
    assert chart(page, key).locator("canvas").count() == 1
    assert chart(page, key).locator(".legend-label").inner_text() == key
    # The status timeline and the spec (advanced_config included).
    timeline = page.locator("#status-timeline").inner_text()
    assert "RUNNING" in timeline and "COMPLETED" in timeline
    assert page.locator('#spec-table th:text-is("advanced.extra.fake_batches")').count() == 1
    # A 0 that stands for a default (batch_size, learning_rate...) is an unset field, said as such when shown; a 0
    # that is a value (num_workers: load in the training process) is shown as it is.
    batch_size = page.locator('#spec-table tr:has(th:text-is("training.batch_size"))')
    assert batch_size.is_hidden()
    assert page.locator('#spec-table tr:has(th:text-is("training.num_workers")) td').inner_text() == "0"
    page.check("#spec-unset")
    assert batch_size.locator("td").inner_text() == "0 (the trainer's default)"
    num_classes = page.locator('#spec-table tr:has(th:text-is("model.num_classes")) td')
    assert num_classes.inner_text() == "0 (from the data set)"
    # Epoch summaries as a table.
    page.locator("#epoch-summaries tr[data-epoch]").first.wait_for(timeout=10_000)
    # x as epoch and a log scale redraw the charts.
    page.select_option("#x-axis", "epoch")
    page.check("#log-scale")
    assert chart(page, key).locator("canvas").count() == 1
    shot(page, tmp_path, "job")


def test_cancel_from_the_page_ends_the_job_cancelled(page: Any, stack: Platform, tmp_path: Path) -> None:
    job = create_through_api(
        page, stack, display_name="to cancel", advanced_config={"extra": {"fake_batches": 1000, "fake_batch_s": 0.1}}
    )
    page.goto(f"{stack.url}/jobs/{job['job_id']}")
    wait_js(page, "document.body.dataset.status === 'RUNNING'", 60)
    page.click("#cancel-job")
    assert page.locator("#cancel-job").inner_text() == "Click again to cancel"
    page.wait_for_timeout(600)  # a confirming click sooner than 500 ms after arming is ignored (a double-click)
    page.click("#cancel-job")
    wait_js(page, "document.body.dataset.status === 'CANCELLED'", 30)
    assert page.locator("#cancel-job").is_hidden()
    wait_until(lambda: stack.backend.job_status(job["job_id"]) == "CANCELLED", 30, "the stored status CANCELLED")
    wait_js(page, "document.body.dataset.live === 'ended'", 30)
    assert "CANCELLED" in page.locator("#status-timeline").inner_text()
    shot(page, tmp_path, "cancelled")


def test_logs_follow_live_and_a_script_line_renders_as_text(
    page: Any, stack: Platform, problems: Any, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    xss = "<img src=x onerror=alert(1)>"
    with logger:
        logger.update_status("running")
        logger.log_message("first line")
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        page.locator("#logs li").first.wait_for()
        for i in range(30):
            logger.log_message(f"line {i}")
        logger.log_message(xss, level="WARNING")
        logger.log_message("hidden debug line", level="DEBUG")
        logger.flush(10)
        wait_js(page, "document.querySelector('#logs').lastElementChild?.textContent.includes('onerror')")
        messages = page.locator("#logs .log-message").all_inner_texts()
        assert messages[0] == "first line"
        assert messages[-1] == xss  # the characters, not an element
        assert messages[1:31] == [f"line {i}" for i in range(30)]
        assert "hidden debug line" not in messages  # the level filter: INFO and above
        assert page.locator("#logs img").count() == 0
        # Following: the newest line is in view.
        from_bottom = "(l => l.scrollHeight - l.scrollTop - l.clientHeight)(document.querySelector('#logs'))"
        assert page.evaluate(from_bottom) < 10
        page.select_option("#log-level", "DEBUG")
        assert page.locator("#logs .log-message").last.inner_text() == "hidden debug line"
        page.select_option("#log-level", "WARNING")
        assert page.locator("#logs .log-message").all_inner_texts() == [xss]
        # A metric key and a job name with markup are text too.
        logger.log_metric(f"train/{xss}", 1.0, step=1, epoch=0)
        logger.flush(10)
        chart(page, f"train/{xss}").wait_for()
        assert page.locator(".chart-title").first.inner_text() == f"train/{xss}"
        logger.update_status("completed")
    shot(page, tmp_path, "xss")
    assert page.locator("img").count() == 0
    assert not problems.dialogs


def test_a_tab_reloaded_mid_run_shows_every_point_exactly_once(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    key = "train/loss"
    total = 400
    with logger:
        logger.update_status("running")
        for step in range(1, 151):
            logger.log_metric(key, 1.0 / step, step=step, epoch=0)
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '150'")
        for step in range(151, 301):
            logger.log_metric(key, 1.0 / step, step=step, epoch=1)
            if step % 10 == 0:
                logger.flush(10)
                time.sleep(0.02)
            if step == 220:
                page.reload()  # mid-run: the reloaded tab loads buckets, then follows after their last sequence
        for step in range(301, total + 1):
            logger.log_metric(key, 1.0 / step, step=step, epoch=1)
        logger.flush(10)
        logger.update_status("completed")
    wait_js(page, "document.body.dataset.status === 'COMPLETED'", 30)
    wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '{total}'", 15)
    page.wait_for_timeout(500)
    assert total_points(page, key) == total
    # Fewer points than buckets: every point is drawn as itself, once.
    assert chart(page, key).get_attribute("data-drawn-points") == str(total)
    assert len(stack.backend.metric_sequences(job_id)) == total
    shot(page, tmp_path, "reloaded")


def test_compare_overlays_two_jobs_and_marks_the_spec_differences(page: Any, stack: Platform, tmp_path: Path) -> None:
    ids = []
    for epochs, scale in ((2, 1.0), (3, 2.0)):
        job_id, logger = fed_job(stack, tmp_path, epochs=epochs)
        with logger:
            logger.update_status("running")
            for step in range(1, 101):
                logger.log_metrics(
                    {"train/loss": scale / step, "val/accuracy": step / (100 * scale)}, step=step, epoch=step // 50
                )
            logger.update_status("completed")
        ids.append(job_id)
    # Picked on the jobs page.
    page.goto(f"{stack.url}/")
    for job_id in ids:
        page.locator(f'tr[data-job-id="{job_id}"] input[type=checkbox]').check()
    page.click("#compare-selected")
    page.wait_for_url("**/compare?jobs=*")
    assert sorted(page.url.split("jobs=")[1].split(",")) == sorted(ids)
    loss = chart(page, "train/loss")
    loss.wait_for()
    assert loss.get_attribute("data-jobs") == "2"
    assert loss.locator(".legend-item").count() == 2
    assert chart(page, "val/accuracy").locator(".legend-item").count() == 2
    differing = page.locator("#spec-compare tr.differs").evaluate_all("rows => rows.map(r => r.dataset.path)")
    assert differing == ["training.epochs"]
    same = page.locator('#spec-compare tr[data-path="model.name"]')
    assert same.get_attribute("class") == ""
    batch_size = page.locator('#spec-compare tr[data-path="training.batch_size"] td')
    assert batch_size.all_inner_texts() == ["0 (the trainer's default)"] * 2
    shot(page, tmp_path, "compare")


def test_compare_charts_a_key_the_running_jobs_log_after_it_opened(page: Any, stack: Platform, tmp_path: Path) -> None:
    fed = [fed_job(stack, tmp_path) for _ in range(2)]
    for _, logger in fed:
        logger.update_status("running")
        logger.log_metric("train/loss", 1.0, step=1, epoch=0)
        logger.flush(10)
    page.goto(f"{stack.url}/compare?jobs={','.join(job_id for job_id, _ in fed)}")
    chart(page, "train/loss").locator("canvas").wait_for()
    # The first epoch ends: both jobs log a validation metric the page has not seen yet.
    for scale, (_, logger) in enumerate(fed, start=1):
        logger.log_metric("val/accuracy", 0.5 * scale, step=1, epoch=0)
        logger.log_metric("train/loss", 0.5, step=2, epoch=0)
        logger.flush(10)
    wait_js(page, "document.querySelector('figure.chart[data-key=\"train/loss\"]')?.dataset.linePoints === '2,2'")
    accuracy = chart(page, "val/accuracy")
    accuracy.locator("canvas").wait_for(timeout=10_000)
    wait_js(page, "document.querySelector('figure.chart[data-key=\"val/accuracy\"]').dataset.linePoints === '1,1'")
    assert accuracy.locator(".legend-value").all_inner_texts() == ["0.5", "1"]
    assert accuracy.get_attribute("data-jobs") == "2"
    for _, logger in fed:
        logger.update_status("completed")
        logger.close(10)


def test_new_job_form_shows_the_validation_error_beside_its_field(page: Any, stack: Platform, tmp_path: Path) -> None:
    page.goto(f"{stack.url}/new")
    # Only what the backend can run is offered (ListFrameworks): timm, whose trainer answers; ultralytics has no
    # trainer on this stack, so it is listed disabled, saying why.
    wait_js(page, "document.querySelector('#framework option[value=\"ultralytics\"]')")
    options = "[...document.querySelectorAll('#framework option')].map((o) => [o.value, o.disabled, o.textContent])"
    assert page.evaluate(options) == [
        ["timm", False, "timm"],
        ["ultralytics", True, "ultralytics (unavailable: no trainer configured)"],
    ]
    assert page.locator("#framework").input_value() == "timm"
    assert "no trainer service for it is configured" in page.locator("#framework-note").inner_text()
    page.fill("#model", "resnet10t")
    page.fill("#dataset", "digits")
    page.fill("#epochs", "0")
    page.click("#submit")
    error = page.locator("#epochs-error")
    error.wait_for()
    wait_js(page, "document.querySelector('#epochs-error').textContent.length > 0")
    assert "epochs" in error.inner_text()
    assert page.locator("#epochs").get_attribute("aria-invalid") == "true"
    assert page.locator("#model-error").inner_text() == ""
    shot(page, tmp_path, "new-epochs")

    # An unknown advanced option: the backend's message, suggestion included, beside advanced_config.
    page.fill("#epochs", "1")
    page.fill("#advanced_config", json.dumps({"extra": {"fake_batchs": 3}}))
    page.click("#submit")
    wait_js(page, "document.querySelector('#advanced_config-error').textContent.length > 0")
    message = page.locator("#advanced_config-error").inner_text()
    assert "fake_batchs" in message, message
    assert page.locator("#epochs-error").inner_text() == ""
    shot(page, tmp_path, "new-advanced")

    # A dataset path the trainer does not have (NOT_FOUND, not INVALID_ARGUMENT): beside the dataset field too.
    page.fill("#advanced_config", json.dumps({"extra": {"fake_batches": 2, "fake_batch_s": 0.01}}))
    page.fill("#dataset", str(stack.root / "no-such-dataset"))
    page.click("#submit")
    shown = "document.querySelector('#dataset-error').textContent || document.querySelector('#form-error').textContent"
    wait_js(page, shown)
    message = page.locator("#dataset-error").inner_text()
    assert "no-such-dataset" in message and "does not exist" in message, page.locator("#form-error").inner_text()
    assert page.locator("#dataset").get_attribute("aria-invalid") == "true"
    assert page.locator("#form-error").inner_text() == ""
    assert page.locator("#advanced_config-error").inner_text() == ""
    page.fill("#dataset", "digits")

    # A valid form creates the job and opens its page.
    page.fill("#advanced_config", json.dumps({"extra": {"fake_batches": 2, "fake_batch_s": 0.01}}))
    page.fill("#display_name", "from the form")
    page.click("#submit")
    page.wait_for_url("**/jobs/*")
    page.locator("#job-title").wait_for()
    assert page.locator("#job-title").inner_text() == "from the form"


def test_without_a_session_pages_and_api_answer_401_and_a_post_without_csrf_is_refused(
    chromium: Any, stack: Platform, page: Any
) -> None:
    url = stack.url
    context = chromium.new_context()
    try:
        anonymous = context.new_page()
        for path in ("/", "/new", "/compare", "/jobs/x", "/static/js/jobs.js"):
            response = anonymous.goto(url + path)
            assert response is not None and response.status == 401, path
        assert anonymous.locator("script").count() == 0
        api = context.request
        assert api.get(f"{url}/api/jobs").status == 401
        assert api.get(f"{url}/api/session").status == 401
        assert api.post(f"{url}/api/jobs", data="{}").status == 401
        assert context.request.get(f"{url}/login?token=wrong").status == 401
    finally:
        context.close()
    # With a session but no CSRF header (or a wrong one), changes are refused.
    job_id, _ = stack.backend.create_job()
    for headers in ({}, {"X-CSRF-Token": "wrong"}):
        response = page.request.post(f"{url}/api/jobs/{job_id}/cancel", data="{}", headers=headers)
        assert response.status == 403, response.text()
        response = page.request.post(f"{url}/api/jobs", data="{}", headers=headers)
        assert response.status == 403
    assert stack.backend.job_status(job_id) != "CANCELLED"
    # The pages carry the strict CSP.
    policy = page.request.get(f"{url}/").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_the_latest_metric_of_a_right_to_left_key_reads_key_then_value(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    key = "val/דיוק"  # Hebrew: "accuracy"
    with logger:
        logger.update_status("running")
        logger.log_metric(key, 0.75, step=12)
        logger.flush(10)
        cell = page.locator(f'tr[data-job-id="{job_id}"] td.metric')
        wait_js(page, f"document.querySelector('tr[data-job-id=\"{job_id}\"] td.metric .metric-value')")
        assert cell.inner_text() == f"{key} 0.75 @ 12"
        # On screen: the key, then the value, then its step, left to right. Unisolated, the Hebrew word took the
        # number after it into its right-to-left run ("val/12 @ 0.75 דיוק").
        boxes = page.evaluate(
            """(id) => [...document.querySelector(`tr[data-job-id="${id}"] td.metric`).children].map((span) => {
                const rects = [...span.getClientRects()];
                return [Math.min(...rects.map((r) => r.left)), Math.max(...rects.map((r) => r.right))];
            })""",
            job_id,
        )
        (_, key_right), (value_left, value_right), (step_left, _) = boxes
        assert key_right <= value_left and value_right <= step_left, f"key, value and step overlap: {boxes}"
        logger.update_status("completed")


def test_text_selected_on_a_running_jobs_page_stays_selected(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    with logger:
        logger.update_status("running")
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, "document.body.dataset.status === 'RUNNING'")
        # A user selects the job id (to copy it), then the job's name.
        for selector in ("dl.facts dd", "#job-title"):
            page.evaluate(
                """(selector) => {
                    const range = document.createRange();
                    range.selectNodeContents(document.querySelector(selector));
                    getSelection().removeAllRanges();
                    getSelection().addRange(range);
                }""",
                selector,
            )
            page.wait_for_timeout(2500)  # the running duration ticks meanwhile
            assert page.evaluate("getSelection().toString()") == job_id, f"the selection of {selector} was lost"
            assert page.locator("dl.facts dd").nth(7).inner_text().endswith(" s")
        logger.update_status("completed")
