"""A local stack: the backend and both trainer services as child processes, on embedded defaults.

Used by `tp up` and `tp demo`. Everything listens on loopback; the data directory holds the SQLite database, the
generated service token, the runs' outputs, the local MLflow store and the artifacts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TOKEN_FILE = "internal_auth_token"


@dataclass
class Service:
    """One child process of the stack."""

    name: str
    command: list[str]
    address: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None


def ensure_token(data_dir: Path) -> str:
    """The stack's service token: INTERNAL_AUTH_TOKEN, or one kept in `<data_dir>/internal_auth_token`."""
    token = os.environ.get("INTERNAL_AUTH_TOKEN", "")
    if token:
        return token
    path = data_dir / TOKEN_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _executable(name: str) -> str:
    """A console script of this environment (beside the running interpreter), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed: run `make setup`")
    return found


class Stack:
    """Starts, health-checks and stops the backend and the trainer services."""

    def __init__(
        self,
        data_dir: Path,
        *,
        backend_port: int = 50051,
        timm_port: int = 50061,
        ultralytics_port: int = 50062,
        frameworks: tuple[str, ...] = ("timm", "ultralytics"),
        backend_env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.token = ensure_token(self.data_dir)
        self.backend_address = f"127.0.0.1:{backend_port}"
        ports = {"timm": timm_port, "ultralytics": ultralytics_port}
        trainers = {fw: f"127.0.0.1:{ports[fw]}" for fw in frameworks}
        base_env = {"INTERNAL_AUTH_TOKEN": self.token, "TP_DATA_DIR": str(self.data_dir)}
        self.services = [
            Service(
                "backend",
                [_executable("tp-backend"), "--listen", self.backend_address],
                self.backend_address,
                {**base_env, "TP_TRAINERS": ",".join(f"{fw}={a}" for fw, a in trainers.items()), **(backend_env or {})},
            ),
            *(
                Service(f"trainer-{fw}", [_executable(f"tp-trainer-{fw}"), "--listen", address], address, base_env)
                for fw, address in trainers.items()
            ),
        ]

    @property
    def database(self) -> Path:
        """The embedded SQLite database."""
        return self.data_dir / "backend.db"

    def start(self, timeout: float = 120.0) -> None:
        """Starts every service and waits until each answers its health check."""
        for service in self.services:
            self._launch(service)
        deadline = time.monotonic() + timeout
        for service in self.services:
            self._wait_healthy(service, deadline)

    def restart_service(self, name: str, timeout: float = 120.0) -> None:
        """Starts one service again (after it died) and waits until it is healthy."""
        service = next(s for s in self.services if s.name == name)
        self._launch(service)
        self._wait_healthy(service, time.monotonic() + timeout)

    def _launch(self, service: Service) -> None:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        service.log_path = logs / f"{service.name}.log"
        with service.log_path.open("ab") as log:
            service.process = subprocess.Popen(
                service.command,
                env={**os.environ, **service.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir.parent,
                start_new_session=True,
            )

    def _wait_healthy(self, service: Service, deadline: float) -> None:
        with grpc.insecure_channel(service.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert service.process is not None
                if service.process.poll() is not None:
                    tail = service.log_path.read_text(errors="replace")[-2000:] if service.log_path else ""
                    raise RuntimeError(f"{service.name} exited with code {service.process.returncode}:\n{tail}")
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{service.name} did not become healthy on {service.address}; see {service.log_path}"
                    )
                time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to every service (trainers first, so their jobs report), then SIGKILL whatever remains."""
        for service in reversed(self.services):
            if service.process is not None and service.process.poll() is None:
                service.process.send_signal(signal.SIGTERM)
                try:
                    service.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(service.process.pid, signal.SIGKILL)
                    service.process.wait()

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
