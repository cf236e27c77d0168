"""The metric keys picked in a key picker (the compare page's, the job page's) are in the page's address, one
repeated `key` parameter each: a reload, or the link opened in another tab, charts the same keys. A key may hold
any character but control characters (the backend's rule), so commas, spaces, `+&=#%` and non-ASCII letters must
come back exactly. Keys the jobs do not have are ignored; no key in the address keeps the first 30, and one empty
`key` (every key unchecked) charts none."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from .conftest import PageProblems, Platform
from .helpers import fed_job, shot, wait_js

pytestmark = pytest.mark.timeout(300)

MAX_CHARTS = 30  # charts.js's MAX_CHARTS
# 32 plain keys: the first 30 are charted to start with. The odd keys sort after them.
PLAIN = [f"m/{index:02d}" for index in range(32)]
ODD = ["z/loss, top 1", "z/a+b&c=d#e%2C?", "z/損失 ü"]


def finished_job(stack: Platform, tmp_path: Path, keys: list[str]) -> str:
    """A completed job with one point (step 1) of each of `keys`."""
    job_id, logger = fed_job(stack, tmp_path)
    logger.update_status("RUNNING")
    for index, key in enumerate(keys):
        logger.log_metric(key, float(index), step=1)
    logger.update_status("COMPLETED")
    assert logger.flush(timeout=30)
    logger.close(timeout=15)
    return job_id


def css(key: str) -> str:
    """`key` inside a double-quoted CSS attribute value."""
    return key.replace("\\", "\\\\").replace('"', '\\"')


def js(key: str) -> str:
    """`key` as a JavaScript string literal inside a single-quoted Python-built expression."""
    return "'" + key.replace("\\", "\\\\").replace("'", "\\'") + "'"


def charted(page: Any, scope: str) -> set[str]:
    """The keys with a chart under `scope`."""
    return set(page.evaluate(f"[...document.querySelectorAll('{scope} figure.chart')].map((f) => f.dataset.key)"))


def keys_in_url(url: str) -> list[str]:
    """The address's `key` parameters, decoded."""
    return parse_qs(urlsplit(url).query, keep_blank_values=True).get("key", [])


def toggle(page: Any, key: str, on: bool) -> None:
    """Checks or unchecks `key` in the key picker."""
    page.locator("#key-search").fill(key)
    box = page.locator(f'#key-list li[data-key="{css(key)}"] input[type="checkbox"]')
    if on:
        box.check()
    else:
        box.uncheck()


def wait_charted(page: Any, scope: str, keys: set[str], attribute: str, points: str) -> None:
    """Waits until exactly `keys` are charted under `scope`, each chart's `attribute` (its points drawn:
    `linePoints` on the compare page, `drawnPoints` on the job page) being `points`."""
    for key in sorted(keys):
        found = f"[...document.querySelectorAll('{scope} figure.chart')].find((f) => f.dataset.key === {js(key)})"
        wait_js(page, f"{found}?.dataset.{attribute} === '{points}'")
    assert charted(page, scope) == keys


def opened_anew(page: Any, problems: PageProblems, scope: str, keys: set[str], attribute: str, points: str) -> Any:
    """Opens the page's address in a new tab and waits until it charts exactly `keys`; returns the new page."""
    other = page.context.new_page()
    problems.watch(other)
    other.goto(page.url)
    other.locator("#key-picker").wait_for()
    wait_charted(other, scope, keys, attribute, points)
    return other


def assert_none_charted(page: Any, scope: str) -> None:
    """Reloads the page and checks that its key picker charts no key."""
    page.reload()
    page.locator("#key-picker").wait_for()
    count = wait_js(page, "document.querySelector('#key-count')?.textContent")
    assert count.startswith("35 keys, 0 charted"), count
    assert charted(page, scope) == set()


def test_compare_keeps_the_picked_keys_in_its_address(
    page: Any, stack: Platform, tmp_path: Path, problems: PageProblems
) -> None:
    ids = [finished_job(stack, tmp_path, PLAIN + ODD) for _ in range(2)]
    base = f"{stack.url}/compare?jobs={','.join(ids)}"
    page.goto(base)
    page.locator("#key-picker").wait_for()
    scope = "#compare-charts"
    wait_charted(page, scope, set(PLAIN[:MAX_CHARTS]), "linePoints", "1,1")
    assert keys_in_url(page.url) == []  # the first 30: nothing in the address

    for key in PLAIN[:3]:
        toggle(page, key, False)
    for key in ODD:
        toggle(page, key, True)
    picked = set(PLAIN[3:MAX_CHARTS]) | set(ODD)
    wait_charted(page, scope, picked, "linePoints", "1,1")
    assert sorted(keys_in_url(page.url)) == sorted(picked)
    assert parse_qs(urlsplit(page.url).query)["jobs"] == [",".join(ids)]

    page.reload()
    page.locator("#key-picker").wait_for()
    wait_charted(page, scope, picked, "linePoints", "1,1")
    wait_js(page, "document.querySelector('#key-count')?.textContent.startsWith('35 keys, 30 charted')")
    page.locator("#key-search").fill("z/")
    for key in ODD:
        assert page.locator(f'#key-list li[data-key="{css(key)}"] input[type="checkbox"]').is_checked()

    other = opened_anew(page, problems, scope, picked, "linePoints", "1,1")
    shot(other, tmp_path, "compare-keys-from-url")

    # Keys the jobs lack are ignored; an address naming none of theirs charts the first 30.
    other.goto(f"{base}&key=nope&key={quote(ODD[2])}&key={quote(ODD[2])}")
    other.locator("#key-picker").wait_for()
    wait_charted(other, scope, {ODD[2]}, "linePoints", "1,1")
    other.goto(f"{base}&key=nope")
    other.locator("#key-picker").wait_for()
    wait_charted(other, scope, set(PLAIN[:MAX_CHARTS]), "linePoints", "1,1")

    # Every key unchecked: the address keeps that choice (one empty `key`), and a reload charts none.
    other.goto(f"{base}&key={quote(ODD[2])}")
    other.locator("#key-picker").wait_for()
    wait_charted(other, scope, {ODD[2]}, "linePoints", "1,1")
    toggle(other, ODD[2], False)
    assert keys_in_url(other.url) == [""]
    assert_none_charted(other, scope)


def test_the_job_page_keeps_the_picked_keys_in_its_address(
    page: Any, stack: Platform, tmp_path: Path, problems: PageProblems
) -> None:
    job_id = finished_job(stack, tmp_path, PLAIN + ODD + ["system/cpu_percent"])
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.locator("#key-picker").wait_for()
    scope = "#charts"
    wait_charted(page, scope, set(PLAIN[:MAX_CHARTS]), "drawnPoints", "1")
    assert keys_in_url(page.url) == []

    for plain, odd in zip(PLAIN[:3], ODD, strict=True):
        toggle(page, plain, False)
        toggle(page, odd, True)
    picked = set(PLAIN[3:MAX_CHARTS]) | set(ODD)
    wait_charted(page, scope, picked, "drawnPoints", "1")
    assert sorted(keys_in_url(page.url)) == sorted(picked)

    page.reload()
    page.locator("#key-picker").wait_for()
    wait_charted(page, scope, picked, "drawnPoints", "1")

    other = opened_anew(page, problems, scope, picked, "drawnPoints", "1")
    shot(other, tmp_path, "job-keys-from-url")

    # A system/ key is not the job page's (the System metrics page charts it): ignored like a missing key.
    other.goto(f"{stack.url}/jobs/{job_id}?key=system%2Fcpu_percent&key=nope&key={quote(ODD[1], safe='')}")
    other.locator("#key-picker").wait_for()
    wait_charted(other, scope, {ODD[1]}, "drawnPoints", "1")

    # Every key unchecked: the address keeps that choice (one empty `key`), and a reload charts none.
    toggle(other, ODD[1], False)
    assert keys_in_url(other.url) == [""]
    assert_none_charted(other, scope)
    wait_js(other, "document.body.dataset.live === 'ended'")  # the charts are loaded: the stream has followed
    assert charted(other, scope) == set()
    assert keys_in_url(other.get_by_role("link", name="Compare…").get_attribute("href") or "") == [""]


def test_the_compare_links_carry_the_picked_keys(page: Any, stack: Platform, tmp_path: Path) -> None:
    # The job page's "Compare…" link and the compare page's "Compare selected" opened the compare page without the
    # picked keys: adding a job to a comparison threw the picked keys away for the first 30.
    ids = [finished_job(stack, tmp_path, PLAIN + ODD) for _ in range(2)]
    page.goto(f"{stack.url}/jobs/{ids[0]}")
    page.locator("#key-picker").wait_for()
    toggle(page, PLAIN[0], False)
    toggle(page, ODD[0], True)
    picked = set(PLAIN[1:MAX_CHARTS]) | {ODD[0]}
    wait_charted(page, "#charts", picked, "drawnPoints", "1")

    page.get_by_role("link", name="Compare…").click()
    page.wait_for_url("**/compare?**")
    page.locator("#key-picker").wait_for()
    wait_charted(page, "#compare-charts", picked, "linePoints", "1")
    assert sorted(keys_in_url(page.url)) == sorted(picked)

    page.locator(f'#compare-picker input[value="{ids[1]}"]').check()
    page.locator("#compare-apply").click()
    page.wait_for_url(lambda url: ids[1] in url)
    page.locator("#key-picker").wait_for()
    wait_charted(page, "#compare-charts", picked, "linePoints", "1,1")
    assert sorted(keys_in_url(page.url)) == sorted(picked)
