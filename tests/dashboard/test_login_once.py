"""The login URL the dashboard prints for a token it made at random works once; an operator's TP_DASHBOARD_TOKEN
stays reusable. POST /logout (with the CSRF token) ends the session and its event streams. SIGTERM or SIGINT ends
tp-dashboard with exit code 0."""

from __future__ import annotations

import re
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess, SseReader


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendProcess]:
    tmp = tmp_path_factory.mktemp("login-once")
    process = BackendProcess(f"sqlite:///{tmp / 'backend.db'}", tmp / "backend-data")
    process.start()
    try:
        yield process
    finally:
        process.close()


def printed_login_url(dashboard: DashboardProcess) -> str:
    match = re.search(r"dashboard: open (http://\S+/login\?token=\S+)", dashboard.log_text())
    assert match, dashboard.log_text()
    return match.group(1)


def test_a_random_login_url_works_once_and_a_new_one_is_in_the_data_dir(
    backend: BackendProcess, tmp_path: Path
) -> None:
    with DashboardProcess(backend, tmp_path, {"TP_DASHBOARD_TOKEN": ""}) as dashboard:
        url = printed_login_url(dashboard)
        first = httpx.Client(timeout=10)
        assert first.get(url, follow_redirects=False).status_code == 303
        assert first.get(f"{dashboard.url}/api/jobs").status_code == 200
        again = httpx.Client(timeout=10).get(url, follow_redirects=False)
        assert again.status_code == 401, f"the printed login URL logged in a second time ({again.status_code})"
        assert "dashboard_login_url" in again.text, again.text
        new_file = backend.data_dir / "dashboard_login_url"
        assert stat.S_IMODE(new_file.stat().st_mode) == 0o600
        new_url = new_file.read_text().strip()
        assert new_url.startswith(f"{dashboard.url}/login?token=") and new_url != url
        second = httpx.Client(timeout=10)
        assert second.get(new_url, follow_redirects=False).status_code == 303
        assert httpx.Client(timeout=10).get(new_url, follow_redirects=False).status_code == 401
        assert first.get(f"{dashboard.url}/api/jobs").status_code == 200, "a new login ends no other session"
        assert new_file.read_text().strip() not in (url, new_url)
        assert new_url.split("token=")[1] not in dashboard.log_text(), "a new login token in the log"


def test_an_operator_token_stays_reusable(backend: BackendProcess, tmp_path: Path) -> None:
    with DashboardProcess(backend, tmp_path) as dashboard:
        for _ in range(3):
            assert httpx.Client(timeout=10).get(dashboard.login_url, follow_redirects=False).status_code == 303


def test_logout_needs_the_csrf_token_and_ends_the_session_and_its_streams(
    backend: BackendProcess, tmp_path: Path
) -> None:
    job_id, _ = backend.create_job()
    with DashboardProcess(backend, tmp_path) as dashboard:
        client = httpx.Client(base_url=dashboard.url, timeout=10)
        assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
        other = httpx.Client(base_url=dashboard.url, timeout=10)
        assert other.get(dashboard.login_url, follow_redirects=False).status_code == 303
        token = client.get("/api/session").json()["csrf_token"]
        streams = [SseReader(client, f"/api/jobs/{job_id}/events"), SseReader(client, "/api/events/jobs")]
        try:
            assert client.post("/logout").status_code == 403
            response = client.post("/logout", headers={"X-CSRF-Token": token})
            assert response.status_code == 200, f"POST /logout answered {response.status_code}"
            assert 'tp_session=""' in response.headers.get("set-cookie", "") or "Max-Age=0" in response.headers.get(
                "set-cookie", ""
            )
            started = time.monotonic()
            for stream in streams:
                kinds = []
                while (event := stream.next(timeout=5)) is not None:
                    kinds.append(event.event)
                assert kinds[-1:] == ["session_ended"], kinds
            assert time.monotonic() - started < 3, "the streams outlived the logout"
            assert client.get("/api/jobs").status_code == 401
            assert other.get("/api/jobs").status_code == 200, "the logout ended another session"
        finally:
            for stream in streams:
                stream.close()


def test_the_page_header_has_a_logout_button() -> None:
    common = Path(__file__).parents[2] / "services/dashboard/src/trainingplatform_dashboard/static/js/common.js"
    text = common.read_text()
    assert '"/logout"' in text and "Log out" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_dashboard_with_exit_code_0(backend: BackendProcess, tmp_path: Path, sig: int) -> None:
    # uvicorn shut down cleanly, then raised the signal it had caught again: tp-dashboard died of SIGTERM (exit
    # status -15, 143 in a shell) or printed a KeyboardInterrupt traceback, where the backend and trainers exit 0.
    dashboard = DashboardProcess(backend, tmp_path)
    dashboard.start()
    try:
        assert dashboard.process is not None
        dashboard.process.send_signal(sig)
        assert dashboard.process.wait(30) == 0, dashboard.log_text()[-3000:]
        assert "Traceback" not in dashboard.log_text()
    finally:
        dashboard.close()
