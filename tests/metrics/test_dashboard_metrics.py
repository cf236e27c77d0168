"""The dashboard's /metrics (TP_METRICS_PORT) against a real backend and a real `tp-dashboard` process: browsers'
event streams, events sent to them and the backend subscriptions behind them."""

from __future__ import annotations

from pathlib import Path

import httpx
from support.backend import BackendProcess, free_port
from support.dashboard import DashboardProcess, SseReader
from support.metrics import scrape, scrape_until
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings


def test_browser_streams_events_and_backend_subscriptions(tmp_path: Path) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "backend-data")
    backend.start()
    port = free_port()
    dashboard = DashboardProcess(backend, tmp_path, {"TP_DASHBOARD_LINGER_S": "0.2", "TP_METRICS_PORT": str(port)})
    try:
        dashboard.start()
        before = scrape(port)
        assert before.value("tp_dashboard_sse_clients", stream="job") == 0
        assert before.value("tp_dashboard_backend_subscriptions") == 0
        job_id, token = backend.create_job()
        client = httpx.Client(base_url=dashboard.url, timeout=30)
        assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
        tabs = [SseReader(client, f"/api/jobs/{job_id}/events") for _ in range(2)]
        try:
            scrape_until(
                port,
                lambda s: (
                    s.value("tp_dashboard_sse_clients", stream="job") == 2
                    and s.value("tp_dashboard_backend_subscriptions") == 1
                ),
                what="two tabs on one backend subscription",
            )
            logger = TrainingLogger(
                job_id,
                backend_address=backend.address,
                token=token,
                spool_dir=tmp_path / "spool",
                settings=LoggerSettings(flush_interval_s=0.02),
            )
            for step in range(1, 51):
                logger.log_metric("train/loss", 1.0 / step, step=step)
            logger.close(timeout=30)
            for tab in tabs:
                seen = 0
                while seen < 50:
                    event = tab.next(timeout=20)
                    assert event is not None
                    if event.event == "metrics":
                        seen += len(event.json()["points"])
            during = scrape(port)
            assert during.value("tp_dashboard_events_sent_total", kind="metrics") >= 2  # at least one per tab
            assert during.value("tp_dashboard_backend_events_received_total") > 0
            assert during.value("tp_dashboard_sse_clients_connected_total") == 2
            assert during.value("tp_dashboard_backend_subscriptions_opened_total", kind="job") == 1
        finally:
            for tab in tabs:
                tab.close()
        scrape_until(
            port,
            lambda s: (
                s.value("tp_dashboard_sse_clients", stream="job") == 0
                and s.value("tp_dashboard_backend_subscriptions") == 0
            ),
            what="no tab and no backend subscription after the linger",
        )
    finally:
        dashboard.close()
        backend.close()
