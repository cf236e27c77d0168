"""Browser tests of the dashboard: Playwright for Python driving Debian's Chromium against real processes.

Playwright cannot download its own browser here, so the tests launch /usr/bin/chromium (TP_CHROMIUM overrides);
`make setup` installs it with apt-get where it can. Where it is missing the tests fail with one line saying what
to install: they are never skipped.

The stack, shared by a module's tests: a backend (SQLite), a trainer service running the tests' FakeAdapter (no
torch: batches that sleep), and a `tp-dashboard` process. Each test gets a fresh browser context logged in
through the login URL, and fails if a page raised a JavaScript error, broke the Content-Security-Policy or
opened a dialog.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess
from trainer_service.trainer_process import FAKE_ADAPTER, TrainerProcess

CHROMIUM = os.environ.get("TP_CHROMIUM", "/usr/bin/chromium")


def _sync_playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: run `make setup` (pip install -r requirements-dev.txt)", pytrace=False)
    return sync_playwright


# Module scope, not session: Playwright's sync API keeps an event loop running in this thread while it is open,
# and asyncio.run() in another module's test on the same xdist worker would then fail.
@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (Debian's build)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: install it with `apt-get install chromium` (as root: `make setup`)",
            pytrace=False,
        )
    with _sync_playwright()() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


class Platform:
    """Backend + fake trainer + dashboard, all real processes."""

    def __init__(self, root: Path) -> None:
        self.backend = BackendProcess(f"sqlite:///{root / 'backend.db'}", root / "backend-data")
        self.trainer = TrainerProcess(
            root / "trainer",
            env={"TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_MLFLOW_ENABLED": "false", "TP_MAX_CONCURRENT_JOBS": "8"},
        )
        self.dashboard: DashboardProcess | None = None
        self.root = root

    def start(self) -> None:
        # The backend dispatches timm jobs to the trainer with its internal token, which the trainer accepts.
        self.trainer.extra_env["INTERNAL_AUTH_TOKEN"] = self.backend.internal_token
        self.trainer.token = self.backend.internal_token
        self.trainer.start()
        self.backend.extra_env.update(
            {"TP_TRAINERS": f"timm={self.trainer.address}", "TP_WATCH_INTERVAL_S": "0.5", "TP_TRAINER_LEASE_S": "5"}
        )
        self.backend.start()
        self.dashboard = DashboardProcess(self.backend, self.root)
        self.dashboard.start()

    @property
    def url(self) -> str:
        """The dashboard's base URL."""
        assert self.dashboard is not None, "the stack is not started"
        return self.dashboard.url

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()
        self.trainer.close()
        self.backend.close()

    def logs(self) -> str:
        """The processes' logs, for a failing test's message."""
        parts = [("backend", self.backend.log_text()), ("trainer", self.trainer.log_text())]
        if self.dashboard is not None:
            parts.append(("dashboard", self.dashboard.log_text()))
        return "\n".join(f"--- {name} ---\n{text[-3000:]}" for name, text in parts)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    platform = Platform(tmp_path_factory.mktemp("platform"))
    try:
        platform.start()
        yield platform
    finally:
        platform.close()


class PageProblems:
    """What a page did that it must not: JavaScript errors, CSP violations, dialogs."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def watch(self, page: Any) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on(
            "console",
            lambda message: (
                self.errors.append(f"console {message.type}: {message.text}")
                if message.type == "error" and "Content Security Policy" in message.text
                else None
            ),
        )

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)


@pytest.fixture
def problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(chromium: Any, stack: Platform, problems: PageProblems, tmp_path: Path) -> Iterator[Any]:
    """A page logged in to the dashboard (a fresh context: its own session cookie)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    problems.watch(tab)
    assert stack.dashboard is not None
    tab.goto(stack.dashboard.login_url)
    assert tab.url.rstrip("/") == stack.dashboard.url, f"the login URL did not land on the jobs page: {tab.url}"
    try:
        yield tab
    finally:
        context.close()
    assert not problems.errors, "\n".join(problems.errors)
    assert not problems.dialogs, f"a dialog opened: {problems.dialogs}"
