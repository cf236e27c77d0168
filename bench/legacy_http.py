"""The old design, for comparison: one HTTP POST per metric with the X-Internal-Auth header, one row per request.

Reconstructed from the old deployment: the trainer's TrainingLogger called `requests.post(...)` once per metric
(no session, so a connection per call) against `POST /internal/training/{job_id}/metrics`, and the backend
checked `X-Internal-Auth` and stored the metric through a SQLAlchemy ORM session, one commit per request. Here a
threaded `http.server` (lighter than any web framework) plays that backend, on the same metrics table, the same
engine and the same SQLite pragmas as `tp-backend`.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from sqlalchemy.orm import Session
from trainingplatform_backend import db
from trainingplatform_backend.models import Metric
from trainingplatform_backend.store import Store

TOKEN = "legacy-internal-token"


def _server(store: Store, job_pk: int) -> ThreadingHTTPServer:

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as production HTTP servers do; else delayed ACKs cost 40 ms a request

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if not hmac.compare_digest(self.headers.get("X-Internal-Auth", ""), TOKEN):
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            metric = json.loads(body)
            with store.write_lock(), Session(store.engine) as session, session.begin():
                session.add(
                    Metric(
                        job_pk=job_pk,
                        sequence=metric["sequence"],
                        key=metric["key"],
                        value=metric["value"],
                        step=metric.get("step"),
                        epoch=metric.get("epoch"),
                        wall_time=metric["timestamp"],
                    )
                )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def measure(database: Path, seconds: float = 3.0) -> float:
    """Metrics per second of the old HTTP-per-metric design into `database` (a SQLite file)."""
    url = f"sqlite:///{database}"
    db.migrate(url)
    store = Store(db.create_db_engine(url))
    view, _ = store.create_job(
        framework="timm",
        model_name="resnet10t",
        display_name="legacy",
        model_config={},
        dataset_config={},
        training_config={},
        advanced_config={},
    )
    server = _server(store, view.job.id)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/internal/training/{view.job.job_id}/metrics"
    headers = {"X-Internal-Auth": TOKEN}
    sent = 0
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            sent += 1
            metric = {
                "key": "train/loss",
                "value": 1.0 / sent,
                "step": sent,
                "epoch": 0,
                "timestamp": time.time(),
                "sequence": sent,
            }
            response = requests.post(url, json=metric, headers=headers, timeout=10)
            if response.status_code != 200:
                raise RuntimeError(f"legacy server answered {response.status_code}")
        elapsed = time.perf_counter() - start
    finally:
        server.shutdown()
        store.engine.dispose()
    return sent / elapsed
