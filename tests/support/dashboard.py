"""A real dashboard process for tests: `tp-dashboard` on a free loopback port against a running backend.

    backend = BackendProcess(...); backend.start()
    dashboard = DashboardProcess(backend, tmp_path); dashboard.start()
    ... dashboard.url, dashboard.login_url, dashboard.token, dashboard.session() ...
    dashboard.close()

The dashboard reads with the backend's READ_AUTH_TOKEN and creates or cancels jobs with the front-end token the
backend generated in its data directory (`<TP_DATA_DIR>/frontend_auth_token`).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.backend import VENV_BIN, BackendProcess, free_port


class DashboardProcess:
    """A `tp-dashboard` subprocess serving http://127.0.0.1:PORT with its own login token."""

    def __init__(
        self,
        backend: BackendProcess,
        tmp_path: Path,
        extra_env: dict[str, str] | None = None,
        *,
        port: int | None = None,
        read_token: bool = True,
    ) -> None:
        """`read_token`: give the dashboard the backend's READ_AUTH_TOKEN (else it reads with the front-end token)."""
        self.backend = backend
        self.dir = Path(tmp_path) / f"dashboard-{secrets.token_hex(3)}"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(24)
        self.login_url = f"{self.url}/login?token={self.token}"
        self.log_path = self.dir / "dashboard.log"
        self.extra_env = extra_env or {}
        self.read_token = read_token
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        """Starts the process and waits until /healthz answers."""
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("TP_AUTH_TOKEN", "READ_AUTH_TOKEN", "INTERNAL_AUTH_TOKEN", "FRONTEND_AUTH_TOKEN")
        }
        env.update(
            {
                "TP_BACKEND_ADDRESS": self.backend.address,
                "TP_DATA_DIR": str(self.backend.data_dir),
                "TP_DASHBOARD_TOKEN": self.token,
                "TP_DASHBOARD_LISTEN": f"127.0.0.1:{self.port}",
                "TP_LOG_LEVEL": "INFO",
            }
        )
        if self.read_token:
            env["READ_AUTH_TOKEN"] = self.backend.read_token
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "tp-dashboard")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"tp-dashboard exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tp-dashboard not ready after {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def health(self) -> dict[str, Any]:
        """The /healthz JSON (counters, no secrets)."""
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
            return json.loads(response.read())

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise

    def close(self) -> None:
        """Stops the process (SIGKILL when it does not stop)."""
        with contextlib.suppress(Exception):
            self.stop()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> DashboardProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def own_stack(
    tmp_path: Path, dashboard_env: dict[str, str] | None = None, backend_env: dict[str, str] | None = None
) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    """A backend on SQLite and a dashboard in front of it, both under `tmp_path`, for one test; both stopped at the
    end."""
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "backend-data", extra_env=backend_env)
    backend.start()
    dashboard = DashboardProcess(backend, tmp_path, dashboard_env)
    try:
        dashboard.start()
        yield backend, dashboard
    finally:
        dashboard.close()
        backend.close()


@dataclass
class SseEvent:
    """One Server-Sent Event."""

    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        """The data, parsed."""
        return json.loads(self.data)


class SseReader:
    """Reads an event stream incrementally in a thread; `next(timeout)` returns the next event (None at the end).

    `comments` counts comment lines (`: ping`); `raw` keeps every line read (to check what the stream carried).
    """

    def __init__(
        self, client: httpx.Client, path: str, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> None:
        self.events: queue.Queue[SseEvent | None] = queue.Queue()
        self.raw: list[str] = []
        self.comments = 0
        self.status_code: int | None = None
        self.headers: httpx.Headers | None = None
        self.last_id: str | None = None
        self._opened = threading.Event()
        self._response: httpx.Response | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._read, args=(client, path, headers or {}, timeout), daemon=True, name="sse-reader"
        )
        self._thread.start()
        if not self._opened.wait(timeout):
            raise TimeoutError(f"event stream {path} did not open")

    def _read(self, client: httpx.Client, path: str, headers: dict[str, str], timeout: float) -> None:
        try:
            with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(timeout, read=None)) as response:
                self._response = response
                self.status_code = response.status_code
                self.headers = response.headers
                self._opened.set()
                event, data, event_id = "message", [], None
                for line in response.iter_lines():
                    self.raw.append(line)
                    if line == "":
                        if data:
                            if event_id is not None:
                                self.last_id = event_id
                            self.events.put(SseEvent(event, "\n".join(data), event_id))
                        event, data, event_id = "message", [], None
                    elif line.startswith(":"):
                        self.comments += 1
                    else:
                        name, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if name == "event":
                            event = value
                        elif name == "data":
                            data.append(value)
                        elif name == "id":
                            event_id = value
        except Exception:
            if not self._closed:
                raise
        finally:
            self._opened.set()
            self.events.put(None)

    def next(self, timeout: float = 10) -> SseEvent | None:
        """The next event; None when the stream ended. Raises queue.Empty after `timeout` seconds."""
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        """Closes the connection (as a browser tab that goes away)."""
        self._closed = True
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()
        self._thread.join(5)
