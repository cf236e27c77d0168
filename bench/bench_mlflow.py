"""MLflow for comparison: a local `mlflow server` (SQLite store), `log_metric` one call per point and `log_batch`
of 1,000 points per call, from one client, in the same run as the platform's numbers.

    .venv/bin/python bench/bench_mlflow.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{directory / 'mlflow.db'}",
        "--artifacts-destination",
        str(directory / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (directory / "mlflow.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(directory / 'mlflow.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.25)
    process.kill()
    raise TimeoutError("mlflow server did not start within 120 s")


def run(seconds: float = 5.0) -> dict[str, float]:
    """Points per second of MLflow's log_metric and log_batch against a local server."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        process, url = _start_server(Path(tmp))
        try:
            client = MlflowClient(tracking_uri=url)
            run_id = client.create_run(client.create_experiment("bench")).info.run_id
            sent, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                client.log_metric(run_id, "train/loss", 1.0 / (sent + 1), step=sent)
                sent += 1
            per_metric = sent / (time.perf_counter() - start)
            sent, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                now = int(time.time() * 1000)
                batch = [Metric("train/batch_loss", 1.0 / (sent + i + 1), now, sent + i) for i in range(1000)]
                client.log_batch(run_id, metrics=batch)
                sent += 1000
            per_batch = sent / (time.perf_counter() - start)
        finally:
            process.terminate()
            process.wait(30)
    return {"mlflow_log_metric_points_per_s": per_metric, "mlflow_log_batch_points_per_s": per_batch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    print(json.dumps(run(parser.parse_args().seconds), indent=2))


if __name__ == "__main__":
    main()
