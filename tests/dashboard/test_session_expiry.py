"""Event streams end with their session: a live job's stream and the jobs feed stop promptly once the session
expires, with an event that says why (real backend, real `tp-dashboard` with a 3 s session)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess, SseReader, own_stack
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings

TTL_S = 3.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    with own_stack(tmp_path_factory.mktemp("session-expiry"), {"TP_DASHBOARD_SESSION_TTL_S": str(TTL_S)}) as pair:
        yield pair


def read_until_end(reader: SseReader, timeout: float) -> tuple[float | None, list[str]]:
    """Reads events until the stream ends: (when it ended, or None when it still ran at `timeout`; event kinds)."""
    kinds: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = reader.next(timeout=max(0.05, deadline - time.monotonic()))
        except Exception:
            break
        if event is None:
            return time.monotonic(), kinds
        kinds.append(event.event)
    return None, kinds


def test_a_live_job_stream_ends_when_its_session_expires(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, dashboard = stack
    job_id, token = backend.create_job()
    logger = TrainingLogger(
        job_id,
        backend_address=backend.address,
        token=token,
        spool_dir=tmp_path / "spool",
        settings=LoggerSettings(flush_interval_s=0.02),
    )
    logger.update_status("RUNNING")
    stop = threading.Event()

    def train() -> None:  # 100 points a second until the test ends
        step = 0
        while not stop.is_set():
            step += 1
            logger.log_metric("train/loss", 1.0 / step, step=step)
            time.sleep(0.01)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    logged_in_at = time.monotonic()
    assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
    reader = SseReader(client, f"/api/jobs/{job_id}/events")
    try:
        assert reader.status_code == 200
        ended, kinds = read_until_end(reader, timeout=TTL_S + 8)
        assert "metrics" in kinds, "no live points before the session expired"
        assert ended is not None, f"the stream went on {TTL_S + 8 - TTL_S:.0f} s after its session expired"
        assert ended - logged_in_at < TTL_S + 1.5, f"the stream ended {ended - logged_in_at - TTL_S:.1f} s late"
        assert kinds[-1] == "session_ended", kinds[-5:]
        assert client.get("/api/jobs").status_code == 401
    finally:
        reader.close()
        stop.set()
        trainer.join(5)
        logger.update_status("COMPLETED")
        logger.close(timeout=15)


def test_the_jobs_feed_ends_when_its_session_expires(stack: tuple[BackendProcess, DashboardProcess]) -> None:
    _, dashboard = stack
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    logged_in_at = time.monotonic()
    assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
    reader = SseReader(client, "/api/events/jobs")
    try:
        ended, kinds = read_until_end(reader, timeout=TTL_S + 8)
        assert ended is not None, "the jobs feed went on after its session expired"
        assert ended - logged_in_at < TTL_S + 1.5, f"the jobs feed ended {ended - logged_in_at - TTL_S:.1f} s late"
        assert kinds[-1:] == ["session_ended"]
    finally:
        reader.close()
