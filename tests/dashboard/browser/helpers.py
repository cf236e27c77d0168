"""What the browser tests share: creating and feeding jobs, waiting on the page, reading charts, screenshots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainingplatform_sdk import TrainingLogger

from .conftest import Platform


def create_through_api(page: Any, stack: Platform, **overrides: Any) -> dict[str, Any]:
    """POST /api/jobs with the page's session and CSRF token: a timm job the fake trainer runs."""
    csrf = page.request.get(f"{stack.url}/api/session").json()["csrf_token"]
    body = {
        "framework": "timm",
        "model": "resnet10t",
        "dataset": {"name": "digits"},
        "epochs": 2,
        "display_name": "browser test job",
        "advanced_config": {"extra": {"fake_batches": 10, "fake_batch_s": 0.15}},
        **overrides,
    }
    response = page.request.post(
        f"{stack.url}/api/jobs",
        data=json.dumps(body),
        headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"},
    )
    assert response.status == 201, f"{response.status} {response.text()}\n{stack.logs()}"
    return response.json()["job"]


def fed_job(stack: Platform, tmp_path: Path, epochs: int = 2) -> tuple[str, TrainingLogger]:
    """An undispatched job and a TrainingLogger writing its telemetry (the test plays the trainer)."""
    job_id, token = stack.backend.create_job(epochs=epochs)
    logger = TrainingLogger(job_id, backend_address=stack.backend.address, token=token, spool_dir=tmp_path / job_id)
    return job_id, logger


def wait_js(page: Any, expression: str, timeout: float = 20) -> Any:
    """Polls a JavaScript expression until it is truthy. (Playwright's wait_for_function evaluates a string with
    eval in the page, which the dashboard's CSP forbids; page.evaluate goes through the debugger protocol.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {expression}")
        page.wait_for_timeout(50)


def set_visibility(page: Any, state: str) -> None:
    """Makes the page hidden or visible to its scripts (as a tab in the background is) and tells it so."""
    page.evaluate(
        """(state) => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => state});
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => state === 'hidden'});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        state,
    )


def chart(page: Any, key: str) -> Any:
    """The chart of one metric key (its <figure>, whose data-* attributes count what it holds and draws)."""
    return page.locator(f'figure.chart[data-key="{key}"]')


def total_points(page: Any, key: str) -> int:
    """How many points the chart of `key` holds: its buckets' counts plus its raw live points."""
    value = chart(page, key).get_attribute("data-total-points")
    return int(value) if value else 0


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in the test's tmp_path (look at them: readable, labelled, nothing overlapping)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
