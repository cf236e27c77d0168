"""A real MLflow tracking server for tests: `mlflow server` on a free loopback port with a SQLite backend store.

Artifacts are server-proxied: `--artifacts-destination` (an S3 URI with `MLFLOW_S3_ENDPOINT_URL` and AWS_* in the
server's environment, or a directory) is where the server writes; clients upload through the server over HTTP and
need no storage credentials. The server's job runner (for GenAI jobs) is turned off: it starts a dozen worker
processes the tests do not need on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


class MlflowServer:
    """An `mlflow server` process.

    Args:
        data_dir: Directory of the SQLite store and the server's log.
        artifacts_destination: Where the server stores artifacts (`s3://bucket/prefix` or a directory).
        env: Extra environment of the server (S3 endpoint and credentials for an S3 destination).
    """

    def __init__(self, data_dir: Path, *, artifacts_destination: str, env: Mapping[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.artifacts_destination = artifacts_destination
        self.extra_env = dict(env or {})
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "mlflow-server.log"

    @property
    def uri(self) -> str:
        """The tracking URI, `http://127.0.0.1:PORT`."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> MlflowServer:
        """Starts the server and waits until `/health` answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        command = [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.data_dir / 'mlflow.db'}",
            "--artifacts-destination",
            self.artifacts_destination,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return self
            time.sleep(0.25)
        raise TimeoutError(f"mlflow server not healthy on {self.uri} after {timeout}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        """What the server wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Stops the server and its uvicorn worker (its own process group): SIGTERM, then SIGKILL after 5 s."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
