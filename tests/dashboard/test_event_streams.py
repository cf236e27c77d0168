"""The ends of the dashboard's event streams, against real `tp-dashboard` processes: a stop (SIGTERM) ends every
open stream without an error in the log."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from support.dashboard import DashboardProcess, SseReader, own_stack

UNFINISHED = "ASGI callable returned without completing response"


def logged_in(dashboard: DashboardProcess) -> tuple[httpx.Client, str]:
    """A client with a session, and the session cookie (for a raw socket)."""
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    login = client.get(dashboard.login_url, follow_redirects=False)
    assert login.status_code == 303, login.text
    return client, login.cookies["tp_session"]


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Waits until `condition()` holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def test_a_stop_ends_every_open_stream_without_an_error_in_the_log(tmp_path: Path) -> None:
    with own_stack(tmp_path) as (backend, dashboard):
        job_id, _ = backend.create_job()
        client, _ = logged_in(dashboard)
        readers = [
            SseReader(client, f"/api/jobs/{job_id}/events"),
            SseReader(client, f"/api/jobs/{job_id}/events"),
            SseReader(client, "/api/events/jobs"),
        ]
        wait_for("the streams open", lambda: dashboard.health()["event_stream_clients"] == 2)
        time.sleep(0.5)
        assert dashboard.stop(timeout=30) == 0
        for reader in readers:
            while (event := reader.next(timeout=10)) is not None:
                assert event.event in ("job", "status"), event
        log = dashboard.log_text()
        assert "Traceback" not in log, log
        assert "Exception in ASGI application" not in log, log
        assert UNFINISHED not in log, log
