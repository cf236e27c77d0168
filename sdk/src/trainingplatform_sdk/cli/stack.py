"""A local stack: the backend, both trainer services and (optionally) the dashboard as child processes, on
embedded defaults.

Used by `tp up` and `tp demo`. Everything listens on loopback; the data directory holds the SQLite database, the
generated service token, the runs' outputs, the local MLflow store and the artifacts.

No orphans: every child gets SIGTERM from the kernel when the process that started it dies, however it dies
(PR_SET_PDEATHSIG on Linux), so a `tp up` killed by a closed pipe, SIGHUP or SIGKILL never leaves a service
running. One listener per port: making a `Stack` checks that every port is free, before the data directory is
created or written to, and fails naming the busy one (`start` checks again); a service that still exits at start
has its reason (the last error line of its log) in the error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from trainingplatform_sdk.server.processes import parent_death_signal
from trainingplatform_sdk.setting_values import tighten_token_file

_log = logging.getLogger("trainingplatform_sdk.cli")

TOKEN_FILE = "internal_auth_token"
FRONTEND_TOKEN_FILE = "frontend_auth_token"
READ_TOKEN_FILE = "read_auth_token"
# Front-end tokens a trainer (and the training code it runs) must not hold: with one it could create jobs.
_TRAINER_WITHHELD_ENV = ("FRONTEND_AUTH_TOKEN", "TP_AUTH_TOKEN", "READ_AUTH_TOKEN", "TP_DASHBOARD_TOKEN")
# The dashboard holds the front-end token (as TP_AUTH_TOKEN) and the read token, never the service token.
_DASHBOARD_WITHHELD_ENV = ("INTERNAL_AUTH_TOKEN", "FRONTEND_AUTH_TOKEN")
ONE_PROCESS_ENV = (
    "TP_METRICS_PORT",
    "TP_BACKEND_LISTEN",
    "TP_TRAINER_LISTEN",
    "TP_DASHBOARD_LISTEN",
    "TP_TLS_CERT_FILE",
    "TP_TLS_KEY_FILE",
    "TP_TLS_CLIENT_CA_FILE",
)
"""Settings of one server process, withheld from every service of the stack: given to all four, they would all
bind one metrics port (all but the first fail) or serve TLS, which the stack's health checks and the address it
prints do not speak. The stack sets each service's listen address itself."""


@dataclass
class Service:
    """One child process of the stack."""

    name: str
    command: list[str]
    address: str
    env: dict[str, str] = field(default_factory=dict)
    withheld_env: tuple[str, ...] = ()
    """Variables of this process's environment the service does not inherit."""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    health_url: str = ""
    """An HTTP URL answering 200 when the service is up (the dashboard); empty: the gRPC health check."""


def check_data_dir(data_dir: Path) -> None:
    """Creates `data_dir` when missing, private (0700: it holds every job's metrics and logs), and checks that a file
    can be created in it. One that exists keeps its mode.

    Raises:
        ValueError: It is a file, or a directory where nothing can be written; the message names it as given.
    """
    why = ""
    if data_dir.exists() and not data_dir.is_dir():
        why = "it is a file"
    else:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=data_dir):
                pass
        except OSError as error:
            why = error.strerror or str(error)
    if why:
        raise ValueError(
            f"the data directory {data_dir} cannot be used: {why}; give another one with --data-dir or TP_DATA_DIR"
        )


def ensure_token(data_dir: Path, variable: str = "INTERNAL_AUTH_TOKEN", file_name: str = TOKEN_FILE) -> str:
    """A token of the stack: the `variable` of the environment, or one kept in `<data_dir>/<file_name>` (written
    once, mode 0600). By default the service token (INTERNAL_AUTH_TOKEN, `internal_auth_token`); the front-end
    token is FRONTEND_AUTH_TOKEN, `frontend_auth_token`."""
    token = os.environ.get(variable, "")
    if token:
        return token
    path = data_dir / file_name
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32))
    tighten_token_file(path, _log)
    return path.read_text().strip()


class PortInUseError(OSError):
    """A port the stack needs is taken."""


def port_in_use(address: str) -> bool:
    """Whether `host:port` cannot be bound now (another process listens there)."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError:
            return True
    return False


def check_ports_free(services: list[tuple[str, str]]) -> None:
    """Every `(name, host:port)` of `services` can be bound now.

    Raises:
        PortInUseError: one is taken (one line naming the first such port and its service).
    """
    for name, address in services:
        if port_in_use(address):
            port = address.rpartition(":")[2]
            raise PortInUseError(
                f"port {port} ({name}, {address}) is already in use: stop what listens there (another `tp up`?) or "
                f"choose another port"
            )


def failure_reason(log_path: Path | None) -> str:
    """The last error line of a service's log (`cannot start: ...`, an ERROR line or an exception), else ''."""
    if log_path is None or not log_path.exists():
        return ""
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()[-200:] if line.strip()]
    for marker in ("cannot start", "ERROR", "Error:", "error:"):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


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
        data_roots: tuple[Path, ...] = (),
        dashboard_port: int | None = None,
    ) -> None:
        """`data_roots`: directories, besides `<data_dir>/datasets`, whose data sets the trainers may read
        (their TP_DATA_ROOTS). `dashboard_port`: also start `tp-dashboard` on 127.0.0.1 at that port (None: no
        dashboard); its one-time login URL is `dashboard_login_url`. The ports are checked before the data
        directory is created or anything (a token) is written to it.

        Raises:
            ValueError: a port is not 1-65535, or the data directory cannot be used (a file, not writable).
            PortInUseError: a port is taken (one line naming it and the service).
        """
        for name, port in (
            ("backend_port", backend_port),
            ("timm_port", timm_port),
            ("ultralytics_port", ultralytics_port),
            ("dashboard_port", dashboard_port or 1),
        ):
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} must be 1-65535, got {port}")
        self.backend_address = f"127.0.0.1:{backend_port}"
        ports = {"timm": timm_port, "ultralytics": ultralytics_port}
        trainers = {fw: f"127.0.0.1:{ports[fw]}" for fw in frameworks}
        check_ports_free(
            [
                ("backend", self.backend_address),
                *((f"trainer-{fw}", address) for fw, address in trainers.items()),
                *([("dashboard", f"127.0.0.1:{dashboard_port}")] if dashboard_port else []),
            ]
        )
        check_data_dir(data_dir)
        self.data_dir = data_dir.resolve()
        self.data_roots = ((self.data_dir / "datasets"), *(Path(root).resolve() for root in data_roots))
        """What the trainers accept dataset paths under (TP_DATA_ROOTS): `<data_dir>/datasets` and `data_roots`."""
        self.token = ensure_token(self.data_dir)
        """The service token (INTERNAL_AUTH_TOKEN): the backend's and the trainers'."""
        self.frontend_token = ensure_token(self.data_dir, "FRONTEND_AUTH_TOKEN", FRONTEND_TOKEN_FILE)
        """The front ends' token (FRONTEND_AUTH_TOKEN): create, cancel and read jobs; what `tp` uses."""
        self.read_token = ensure_token(self.data_dir, "READ_AUTH_TOKEN", READ_TOKEN_FILE)
        """The backend's read-only token (READ_AUTH_TOKEN): what the dashboard reads with."""
        self.dashboard_token = os.environ.get("TP_DASHBOARD_TOKEN", "").strip() or secrets.token_urlsafe(24)
        """The dashboard's login token (TP_DASHBOARD_TOKEN, else random per start: then it works once)."""
        self.dashboard_token_one_time = not os.environ.get("TP_DASHBOARD_TOKEN", "").strip()
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}" if dashboard_port else ""
        self.withheld_settings = tuple(name for name in ONE_PROCESS_ENV if name in os.environ)
        """The `ONE_PROCESS_ENV` variables of this process's environment, which no service gets."""
        base_env = {"INTERNAL_AUTH_TOKEN": self.token, "TP_DATA_DIR": str(self.data_dir)}
        self.services = [
            Service(
                "backend",
                [_executable("tp-backend"), "--listen", self.backend_address],
                self.backend_address,
                {
                    **base_env,
                    "FRONTEND_AUTH_TOKEN": self.frontend_token,
                    "READ_AUTH_TOKEN": self.read_token,
                    "TP_TRAINERS": ",".join(f"{fw}={a}" for fw, a in trainers.items()),
                    **(backend_env or {}),
                },
            ),
            *(
                Service(
                    f"trainer-{fw}",
                    [_executable(f"tp-trainer-{fw}"), "--listen", address],
                    address,
                    {**base_env, "TP_DATA_ROOTS": os.pathsep.join(str(root) for root in self.data_roots)},
                    withheld_env=_TRAINER_WITHHELD_ENV,
                )
                for fw, address in trainers.items()
            ),
        ]
        if dashboard_port:
            self.services.append(
                Service(
                    "dashboard",
                    [_executable("tp-dashboard")],
                    f"127.0.0.1:{dashboard_port}",
                    {
                        "TP_DATA_DIR": str(self.data_dir),
                        "TP_BACKEND_ADDRESS": self.backend_address,
                        "TP_DASHBOARD_LISTEN": f"127.0.0.1:{dashboard_port}",
                        "TP_DASHBOARD_TOKEN": self.dashboard_token,
                        "TP_DASHBOARD_TOKEN_ONE_TIME": "true" if self.dashboard_token_one_time else "false",
                        "TP_AUTH_TOKEN": self.frontend_token,
                        "READ_AUTH_TOKEN": self.read_token,
                    },
                    withheld_env=_DASHBOARD_WITHHELD_ENV,
                    health_url=f"{self.dashboard_url}/healthz",
                )
            )

    @property
    def dashboard_login_url(self) -> str:
        """The dashboard's one-time login URL (empty without a dashboard): it sets the session cookie."""
        return f"{self.dashboard_url}/login?token={self.dashboard_token}" if self.dashboard_url else ""

    @property
    def database(self) -> Path:
        """The embedded SQLite database."""
        return self.data_dir / "backend.db"

    def withheld_note(self) -> str:
        """One line naming the `withheld_settings` and why no service gets them; empty when there are none."""
        if not self.withheld_settings:
            return ""
        return (
            f"{', '.join(self.withheld_settings)}: not given to the services (settings of one server, which all of "
            "them would share: one metrics port, TLS the stack does not speak)"
        )

    def start(self, timeout: float = 120.0) -> None:
        """Checks that every port is free, starts every service and waits until each answers its health check.
        On any failure, stops what was started.

        Raises:
            PortInUseError: a port is taken (one line naming it and the service): taken since the stack was made.
            RuntimeError: a service exited at start (with the reason from its log).
            TimeoutError: a service did not become healthy in time.
        """
        check_ports_free([(service.name, service.address) for service in self.services])
        try:
            for service in self.services:
                self._launch(service)
            deadline = time.monotonic() + timeout
            for service in self.services:
                self._wait_healthy(service, deadline)
        except BaseException:
            self.stop(timeout=10)
            raise

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
                env={
                    **{
                        k: v
                        for k, v in os.environ.items()
                        if k not in service.withheld_env and k not in ONE_PROCESS_ENV
                    },
                    **service.env,
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.data_dir.parent,
                start_new_session=True,
                preexec_fn=parent_death_signal(),  # two system calls in the child
            )

    def _wait_healthy(self, service: Service, deadline: float) -> None:
        if service.health_url:
            self._wait_http(service, deadline)
            return
        with grpc.insecure_channel(service.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert service.process is not None
                if service.process.poll() is not None:
                    raise self.exit_error(service)
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

    @staticmethod
    def exit_error(service: Service) -> RuntimeError:
        """The error of a service that exited: its exit code (or the signal that killed it), the last error line
        of its log (else its last lines) and the log's path."""
        assert service.process is not None
        code = service.process.returncode
        how = f"exited with code {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"exited (killed by {signal.Signals(-code).name})"
        reason = failure_reason(service.log_path)
        return RuntimeError(f"{service.name} {how}" + (f": {reason}" if reason else "") + f" (log {service.log_path})")

    def _wait_http(self, service: Service, deadline: float) -> None:
        while True:
            assert service.process is not None
            if service.process.poll() is not None:
                raise self.exit_error(service)
            try:
                with urllib.request.urlopen(service.health_url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
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
