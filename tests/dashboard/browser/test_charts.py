"""Long series drawn honestly in the browser: server buckets with their min/max band (a spike stays visible),
zooming re-queries the visible range, live points past a bound are re-bucketed; and the system page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from .conftest import Platform
from .helpers import chart, fed_job, shot, wait_js

pytestmark = pytest.mark.timeout(300)


def dataset(page: Any, key: str, name: str) -> str:
    return chart(page, key).get_attribute(f"data-{name}") or ""


def test_a_long_series_is_bucketed_keeps_its_spike_and_zooming_requeries(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    key = "train/loss"
    total = 5000
    with logger:
        logger.update_status("running")
        for step in range(1, total + 1):
            logger.log_metric(key, 100.0 if step == 2500 else 1 / math.sqrt(step), step=step, epoch=step // 2500)
        logger.update_status("completed")
    series_requests: list[str] = []
    page.on("request", lambda request: series_requests.append(request.url) if "/series" in request.url else None)
    page.goto(f"{stack.url}/jobs/{job_id}")
    chart(page, key).locator("canvas").wait_for()
    wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '{total}'")
    drawn = int(dataset(page, key, "drawn-points"))
    assert drawn <= 1000, f"{drawn} points drawn: the series was not bucketed"
    assert dataset(page, key, "y-max") == "100"  # the one spike among 5000 points is in the band
    shot(page, tmp_path, "bucketed")

    # Drag across the middle fifth of the plot: the page asks the server for that range only.
    over = chart(page, key).locator(".u-over")
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=8)
    page.mouse.up()
    chart(page, key).locator("button", has_text="reset zoom").wait_for()
    wait_js(page, "performance.getEntriesByType('resource').some(e => e.name.includes('min_step='))")
    zoom = [url for url in series_requests if "min_step=" in url]
    assert zoom and "max_step=" in zoom[-1], series_requests
    page.wait_for_timeout(500)
    assert dataset(page, key, "y-max") == "100"  # the spike lies in the zoomed range and stays visible
    shot(page, tmp_path, "zoomed")

    # A double click goes back to the whole run.
    over.dblclick()
    chart(page, key).locator("button", has_text="reset zoom").wait_for(state="hidden")
    assert int(dataset(page, key, "drawn-points")) == drawn


def test_live_points_past_the_bound_are_rebucketed_each_once(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    key = "train/loss"
    total = 3000
    with logger:
        logger.update_status("running")
        logger.log_metric(key, 1.0, step=1, epoch=0)
        logger.flush(10)
        page.goto(f"{stack.url}/jobs/{job_id}")
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '1'")
        for step in range(2, total + 1):
            logger.log_metric(key, 1 / math.sqrt(step), step=step, epoch=0)
            if step % 250 == 0:
                logger.flush(10)
        logger.update_status("completed")
    wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]')?.dataset.totalPoints === '{total}'", 30)
    # Past 2000 raw points the page asked the server to bucket the key again: fewer raw points, none lost.
    wait_js(page, f"+document.querySelector('figure.chart[data-key=\"{key}\"]').dataset.rawPoints < 2000", 30)
    assert int(dataset(page, key, "buckets")) > 0
    assert int(dataset(page, key, "drawn-points")) < total
    assert dataset(page, key, "total-points") == str(total)


def test_system_page_shows_the_system_metrics(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    with logger:
        logger.update_status("running")
        for step in range(1, 31):
            logger.log_metrics(
                {
                    "system/cpu_percent": 50 + 10 * math.sin(step / 3),
                    "system/memory_rss_bytes": 1.5e9 + step * 1e6,
                    "train/loss": 1 / step,
                },
                step=step,
                epoch=0,
            )
        logger.update_status("completed")
    page.goto(f"{stack.url}/jobs/{job_id}")
    chart(page, "train/loss").wait_for()
    assert chart(page, "system/cpu_percent").count() == 0  # on their own page
    assert "2 system/ metrics" in page.locator("#system-note").inner_text()
    page.click("text=System metrics")
    page.wait_for_url(f"**/jobs/{job_id}/system")
    for key in ("system/cpu_percent", "system/memory_rss_bytes"):
        chart(page, key).locator("canvas").wait_for()
        assert dataset(page, key, "total-points") == "30"
    assert chart(page, "train/loss").count() == 0
    shot(page, tmp_path, "system")


def test_non_finite_values_show_in_the_legend_and_the_chart_says_it_cannot_draw_them(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    for key, values in (
        ("train/nan", [math.nan, math.nan]),
        ("train/inf", [math.inf, math.inf]),
        ("train/neginf", [-math.inf, -math.inf]),
        ("train/mixed", [0.5, 0.25, math.inf]),
    ):
        for step, value in enumerate(values, start=1):
            logger.log_metric(key, value, step=step)
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    page.goto(f"{stack.url}/jobs/{job_id}")
    for key, shown in (("train/nan", "NaN"), ("train/inf", "∞"), ("train/neginf", "\u2212∞"), ("train/mixed", "∞")):
        chart(page, key).wait_for()
        legend = chart(page, key).locator(".legend-value").inner_text()
        assert legend == shown, f"the legend of {key} shows {legend!r}, not {shown!r}"
        note = chart(page, key).locator(".chart-note")
        assert note.is_visible(), f"the chart of {key} says nothing of the values it cannot draw"
        assert "cannot be drawn" in note.inner_text()
    assert "every value" in chart(page, "train/nan").locator(".chart-note").inner_text()
    assert "1 of 3" in chart(page, "train/mixed").locator(".chart-note").inner_text()


def test_keys_are_grouped_only_by_a_leading_name_not_at_any_slash(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    script = '<script>alert("xss")</script>'
    for key in (script, "val/top-1/acc", "loss"):
        logger.log_metric(key, 0.5, step=1)
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    page.goto(f"{stack.url}/jobs/{job_id}")
    chart(page, "loss").wait_for()
    prefixes = page.evaluate("[...document.querySelectorAll('section.chart-section')].map((s) => s.dataset.prefix)")
    assert script.split("/")[0] not in prefixes, f"a key was grouped at a slash inside it: {prefixes}"
    assert sorted(prefixes) == ["other", "val"]
    other = page.locator('section.chart-section[data-prefix="other"]')
    assert other.locator("figure.chart").count() == 2
    assert sorted(other.locator("figure.chart .chart-title").all_inner_texts()) == sorted(["loss", script])


def test_axis_ticks_of_very_large_values_stay_short(page: Any, stack: Platform) -> None:
    page.goto(f"{stack.url}/")
    ticks = page.evaluate(
        "import('/static/js/common.js').then((m) => [1e15, 2.5e17, 1e21, 1.5e30, -3e20, 999e12].map(m.formatTick))"
    )
    # Short enough to sit beside the chart (its y axis is 64 px wide), and the value they stand for.
    assert ticks == ["1e15", "2.5e17", "1e21", "1.5e30", "-3e20", "999T"], ticks


def test_a_chart_of_very_small_values_is_scaled_to_them_not_flat_at_zero(
    page: Any, stack: Platform, tmp_path: Path
) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    for step in range(1, 6):
        logger.log_metric("train/tiny", step * 1e-30, step=step)
        logger.log_metric("train/grad_norm", -step * 1e-18, step=step)
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    page.goto(f"{stack.url}/jobs/{job_id}")
    for key, lowest, highest in (("train/tiny", 1e-30, 5e-30), ("train/grad_norm", -5e-18, -1e-18)):
        chart(page, key).locator("canvas").wait_for()
        wait_js(page, f"document.querySelector('figure.chart[data-key=\"{key}\"]').dataset.yRange")
        low, high = map(float, dataset(page, key, "y-range").split())
        span = highest - lowest
        # The y axis spans the values (not uPlot's 0..100 of a series it cannot range, with the line flat at 0).
        assert low <= lowest and high >= highest, f"{key}: the y axis {low}..{high} leaves out {lowest}..{highest}"
        assert high - low < 10 * span, f"{key}: the y axis {low}..{high} is far wider than the values"
    assert dataset(page, "train/tiny", "y-unit") == "1e-30"  # the axis says its unit
    shot(page, tmp_path, "tiny")


def test_on_a_log_scale_a_chart_says_which_values_it_cannot_draw(page: Any, stack: Platform, tmp_path: Path) -> None:
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    for step in range(1, 5):
        logger.log_metric("train/margin", -float(step), step=step)  # never positive
        logger.log_metric("train/loss", float(step - 1), step=step)  # 0, then positive
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    page.goto(f"{stack.url}/jobs/{job_id}")
    chart(page, "train/margin").locator("canvas").wait_for()
    assert not chart(page, "train/margin").locator(".chart-note").is_visible()  # linear: every value drawn
    page.check("#log-scale")
    for key, says in (("train/margin", "every value"), ("train/loss", "1 of 4 values")):
        note = chart(page, key).locator(".chart-note")
        assert note.is_visible(), f"the log-scale chart of {key} does not say what it leaves out"
        assert says in note.inner_text() and "log scale" in note.inner_text(), note.inner_text()
    page.uncheck("#log-scale")
    assert not chart(page, "train/margin").locator(".chart-note").is_visible()
    shot(page, tmp_path, "log-scale")
