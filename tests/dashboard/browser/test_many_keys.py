"""A job with more metric keys than one GetMetricSeries answer (1,000) and than the page charts at once: the job
page lists every key in its key picker, charts a bounded number, and charts a key picked past the first 1,000
(live points included)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import Platform
from .helpers import chart, fed_job, shot, total_points, wait_js

pytestmark = pytest.mark.timeout(300)

KEYS = 1500
MAX_CHARTS = 30  # charts.js's MAX_CHARTS


def test_a_job_with_1500_keys_lists_every_key_and_charts_the_one_picked(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    keys = [f"layer/{index:04d}" for index in range(KEYS - 1)] + ["val/accuracy"]  # val/accuracy: the 1,500th
    logger.update_status("RUNNING")
    for index, key in enumerate(keys):
        logger.log_metric(key, float(index), step=1)
    assert logger.flush(timeout=60)
    try:
        page.goto(f"{stack.url}/jobs/{job_id}")
        page.locator("#key-picker").wait_for()
        wait_js(page, f"document.querySelector('#key-count')?.textContent.startsWith('{KEYS} keys')")
        charts = page.locator("figure.chart").count()
        assert 0 < charts <= MAX_CHARTS, f"{charts} charts drawn for {KEYS} keys"
        assert chart(page, "val/accuracy").count() == 0

        page.locator("#key-search").fill("accuracy")
        box = page.locator('#key-list li[data-key="val/accuracy"] input[type="checkbox"]')
        box.wait_for()
        assert page.locator("#key-list li").count() == 1
        # The page charts at most MAX_CHARTS keys: one more is refused until another is unchecked.
        box.click()
        wait_js(page, "document.querySelector('#key-count').textContent.includes('uncheck a key first')")
        assert not box.is_checked() and chart(page, "val/accuracy").count() == 0
        page.locator("#key-search").fill("layer/0000")
        page.locator('#key-list li[data-key="layer/0000"] input[type="checkbox"]').uncheck()
        wait_js(page, "!document.querySelector('figure.chart[data-key=\"layer/0000\"]')")
        page.locator("#key-search").fill("accuracy")
        page.locator('#key-list li[data-key="val/accuracy"] input[type="checkbox"]').check()
        chart(page, "val/accuracy").locator("canvas").wait_for()
        wait_js(page, "document.querySelector('figure.chart[data-key=\"val/accuracy\"]')?.dataset.totalPoints === '1'")
        assert page.locator("figure.chart").count() == charts

        # The picked key follows live; an unpicked one is not charted.
        logger.log_metric("val/accuracy", 2.0, step=2)
        logger.log_metric("layer/0999", 2.0, step=2)
        assert logger.flush(timeout=15)
        wait_js(page, "document.querySelector('figure.chart[data-key=\"val/accuracy\"]')?.dataset.totalPoints === '2'")
        assert total_points(page, "val/accuracy") == 2
        assert page.locator("figure.chart").count() == charts and chart(page, "layer/0999").count() == 0
        shot(page, tmp_path, "many-keys")
    finally:
        logger.update_status("COMPLETED")
        logger.close(timeout=15)


def test_compare_of_jobs_with_1500_keys_charts_a_bounded_number_and_says_so(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    keys = [f"layer/{index:04d}" for index in range(KEYS - 1)] + ["val/accuracy"]
    ids = []
    for job_keys in (keys, [keys[0], keys[-1]]):
        job_id, logger = fed_job(stack, tmp_path)
        logger.update_status("RUNNING")
        for index, key in enumerate(job_keys):
            logger.log_metric(key, float(index), step=1)
        logger.update_status("COMPLETED")
        logger.close(timeout=60)
        ids.append(job_id)
    page.goto(f"{stack.url}/compare?jobs={','.join(ids)}")
    note = page.locator("#compare-charts .compare-keys-note")
    note.wait_for()
    assert f"{KEYS} metric keys" in note.inner_text()
    chart(page, "layer/0000").locator("canvas").wait_for()
    assert chart(page, "layer/0000").get_attribute("data-jobs") == "2"
    assert page.locator("#compare-charts figure.chart").count() == MAX_CHARTS


def test_compare_past_30_keys_has_a_key_picker_and_charts_a_picked_key_for_every_job(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    # 40 keys each, 30 shared: 50 keys together. In key order the first 30 are alpha/* and beta/* (each in one job
    # only) and shared/00..09; shared/29 is past them.
    shared = [f"shared/{index:02d}" for index in range(30)]
    own = {"alpha": [f"alpha/{index:02d}" for index in range(10)], "beta": [f"beta/{index:02d}" for index in range(10)]}
    ids, loggers = [], []
    for name in ("alpha", "beta"):
        job_id, logger = fed_job(stack, tmp_path)
        logger.update_status("RUNNING")
        for index, key in enumerate(shared + own[name]):
            logger.log_metric(key, float(index), step=1)
        assert logger.flush(timeout=30)
        ids.append(job_id)
        loggers.append(logger)
    try:
        page.goto(f"{stack.url}/compare?jobs={','.join(ids)}")
        page.locator("#key-picker").wait_for()
        note = page.locator("#compare-charts .compare-keys-note")
        assert "50 metric keys" in note.inner_text() and "picker" in note.inner_text()
        wait_js(page, "document.querySelector('#key-count')?.textContent.startsWith('50 keys, 30 charted')")
        chart(page, "shared/09").locator("canvas").wait_for()
        assert page.locator("#compare-charts figure.chart").count() == MAX_CHARTS
        assert chart(page, "shared/29").count() == 0
        assert chart(page, "alpha/00").get_attribute("data-jobs") == "1"

        # A 31st key is refused until another is unchecked; unchecking removes that chart.
        page.locator("#key-search").fill("shared/29")
        box = page.locator('#key-list li[data-key="shared/29"] input[type="checkbox"]')
        box.click()
        wait_js(page, "document.querySelector('#key-count').textContent.includes('uncheck a key first')")
        assert not box.is_checked() and chart(page, "shared/29").count() == 0
        page.locator("#key-search").fill("alpha/00")
        page.locator('#key-list li[data-key="alpha/00"] input[type="checkbox"]').uncheck()
        wait_js(page, "!document.querySelector('#compare-charts figure.chart[data-key=\"alpha/00\"]')")

        # The picked key is charted for both jobs: one line each, with its point.
        page.locator("#key-search").fill("shared/29")
        box.check()
        picked = chart(page, "shared/29")
        picked.locator("canvas").wait_for()
        wait_js(page, "document.querySelector('figure.chart[data-key=\"shared/29\"]')?.dataset.linePoints === '1,1'")
        assert picked.get_attribute("data-jobs") == "2"
        assert picked.locator(".legend-item").count() == 2
        assert page.locator("#compare-charts figure.chart").count() == MAX_CHARTS

        # Live: the picked key follows both running jobs; an unpicked key gets no chart.
        for logger in loggers:
            logger.log_metric("shared/29", 2.0, step=2)
            logger.log_metric("alpha/00", 2.0, step=2)
            assert logger.flush(timeout=15)
        wait_js(page, "document.querySelector('figure.chart[data-key=\"shared/29\"]')?.dataset.linePoints === '2,2'")
        assert chart(page, "alpha/00").count() == 0
        shot(page, tmp_path, "compare-key-picker")
    finally:
        for logger in loggers:
            logger.update_status("COMPLETED")
            logger.close(timeout=15)
