"""`tp up` starts the dashboard beside the backend and the trainers, prints its one-time login URL, gives it the
backend's read token for reads, and stops it on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
from support.backend import VENV_BIN, free_port


def test_tp_up_starts_the_dashboard_and_prints_its_login_url(tmp_path: Path) -> None:
    ports = [free_port() for _ in range(4)]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("INTERNAL_AUTH_TOKEN", "FRONTEND_AUTH_TOKEN", "READ_AUTH_TOKEN", "TP_AUTH_TOKEN", "TP_DATA_DIR")
    }
    env.pop("TP_DASHBOARD_TOKEN", None)
    process = subprocess.Popen(
        [
            str(VENV_BIN / "tp"),
            "--data-dir",
            str(tmp_path / "data"),
            "up",
            "--backend-port",
            str(ports[0]),
            "--timm-port",
            str(ports[1]),
            "--ultralytics-port",
            str(ports[2]),
            "--dashboard-port",
            str(ports[3]),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    found = threading.Event()
    login: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = re.search(r"dashboard: open (http://\S+/login\?token=\S+)", line)
            if match:
                login.append(match.group(1))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(180), "".join(lines)
        url = login[0]
        assert url.startswith(f"http://127.0.0.1:{ports[3]}/login?token=")
        client = httpx.Client(base_url=f"http://127.0.0.1:{ports[3]}", timeout=10)
        assert client.get("/api/jobs").status_code == 401
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert client.get("/api/jobs").json()["jobs"] == []
        reused = httpx.Client(base_url=f"http://127.0.0.1:{ports[3]}", timeout=10).get(url, follow_redirects=False)
        assert reused.status_code == 401, f"tp up's login URL logged in a second time ({reused.status_code})"
        assert "dashboard_login_url" in "".join(lines)
        next_url = (tmp_path / "data" / "dashboard_login_url").read_text().strip()
        assert httpx.Client(timeout=10).get(next_url, follow_redirects=False).status_code == 303
        health = client.get("/healthz").json()
        assert health["reads_with_read_token"] is True, "tp up gives the dashboard a read-only token"
        assert (tmp_path / "data" / "read_auth_token").exists()
        read_token = (tmp_path / "data" / "read_auth_token").read_text().strip()
        assert read_token not in "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
        reader.join(5)
    assert code == 0, "".join(lines)
    deadline = time.monotonic() + 10
    while True:  # the dashboard stopped with the stack
        try:
            httpx.get(f"http://127.0.0.1:{ports[3]}/healthz", timeout=1)
        except httpx.HTTPError:
            break
        assert time.monotonic() < deadline, "the dashboard still answers after tp up stopped"
        time.sleep(0.2)
