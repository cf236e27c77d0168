"""A real backend process for tests: started with `tp-backend` on a free loopback port, killed, restarted.

The database is real too: a SQLite file in a temporary directory, or a PostgreSQL database created on the
local server (127.0.0.1:5432) for the test and dropped after it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2, jobs_pb2_grpc
from trainingplatform.telemetry.v1 import telemetry_pb2_grpc

PG_ADMIN_URL = os.environ.get("TP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """Creates a fresh PostgreSQL database for one test and drops it afterwards. Fails (never skips) when the
    server is not reachable: CI must run the PostgreSQL tests."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:
        admin.dispose()
        raise RuntimeError(
            f"PostgreSQL is required for these tests and is not reachable at {PG_ADMIN_URL}: "
            f"{error}. Start it (see README) or set TP_TEST_POSTGRES_URL."
        ) from error
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


class BackendProcess:
    """A `tp-backend` subprocess with its own data directory, database and token."""

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        *,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.database_url = database_url
        self.cpus = cpus  # CPUs the process (all its threads) may run on; None: any
        self.data_dir = data_dir
        self.port = port or free_port()
        # A port picked here may be taken by another test's process before the backend binds it (free_port closes
        # its probe socket): the first start then moves to another one (see `start`).
        self._port_picked = port is None
        self._started = False
        self.address = f"127.0.0.1:{self.port}"
        self.internal_token = secrets.token_urlsafe(24)
        self.read_token = secrets.token_urlsafe(24)
        self.log_path = data_dir / "backend.log"
        self.extra_env = extra_env or {}
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self._engine = create_engine(database_url)
        self._channel: grpc.Channel | None = None
        self.credentials = credentials

    def open_channel(self) -> grpc.Channel:
        """A new channel to the backend (TLS when the process was given credentials)."""
        if self.credentials is not None:
            return grpc.secure_channel(self.address, self.credentials)
        return grpc.insecure_channel(self.address)

    # --- process control ---------------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        """Starts the process and waits until its health check answers SERVING. On the first start, a port this
        object picked that another process took meanwhile is replaced by a free one (up to 3 times)."""
        for attempt in range(3):
            try:
                self._start(timeout)
            except RuntimeError as error:
                movable = self._port_picked and not self._started and self._channel is None and attempt < 2
                if not (movable and "the port is in use" in str(error)):
                    raise
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
                continue
            self._started = True
            return

    def _start(self, timeout: float) -> None:
        env = {
            **os.environ,
            "INTERNAL_AUTH_TOKEN": self.internal_token,
            "READ_AUTH_TOKEN": self.read_token,
            "DATABASE_URL": self.database_url,
            "TP_DATA_DIR": str(self.data_dir),
            "TP_SHUTDOWN_GRACE_S": "5",
            **self.extra_env,
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(VENV_BIN / "tp-backend"), "--listen", self.address, *self.extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None,
        )
        log.close()
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60) -> None:
        """Waits until the health check answers SERVING."""
        deadline = time.monotonic() + timeout
        with self.open_channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"backend exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
                try:
                    if (
                        stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                        == health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"backend not healthy after {timeout}s:\n{self.log_text()[-3000:]}")
                time.sleep(0.05)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> None:
        """Starts again on the same port and database."""
        self.start()

    def close(self) -> None:
        """Stops the process and releases connections."""
        if self._channel is not None:
            self._channel.close()
        with contextlib.suppress(Exception):
            self.stop()
        self.kill()
        self._engine.dispose()

    def log_text(self) -> str:
        """Everything the process wrote to stdout and stderr."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- clients -----------------------------------------------------------------------------------------

    @property
    def channel(self) -> grpc.Channel:
        """A shared plaintext channel to the backend."""
        if self._channel is None:
            self._channel = self.open_channel()
        return self._channel

    def jobs(self) -> jobs_pb2_grpc.JobsServiceStub:
        """A JobsService stub on the shared channel."""
        return jobs_pb2_grpc.JobsServiceStub(self.channel)

    def telemetry(self) -> telemetry_pb2_grpc.TrainingTelemetryServiceStub:
        """A TrainingTelemetryService stub on the shared channel."""
        return telemetry_pb2_grpc.TrainingTelemetryServiceStub(self.channel)

    def create_job(
        self, framework: str = "timm", model: str = "resnet10t", epochs: int = 3, dataset: str = "digits"
    ) -> tuple[str, str]:
        """Creates a job that is not dispatched (the test plays the trainer); returns (job_id, telemetry token)."""
        spec = common_pb2.JobSpec(
            framework=framework,
            model=common_pb2.ModelConfig(name=model),
            dataset=common_pb2.DatasetConfig(name=dataset),
            training=common_pb2.TrainingConfig(epochs=epochs),
        )
        response = self.jobs().CreateJob(
            jobs_pb2.CreateJobRequest(spec=spec, dispatch=False), metadata=auth(self.internal_token), timeout=10
        )
        return response.job.job_id, response.telemetry_token

    # --- the database, read directly ---------------------------------------------------------------------

    def _job_pk(self, conn, job_id: str) -> int:  # type: ignore[no-untyped-def]
        return conn.execute(text("SELECT id FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()

    def metric_sequences(self, job_id: str) -> list[int]:
        """Every stored metric sequence of the job, in order (duplicates would show twice)."""
        with self._engine.connect() as conn:
            pk = self._job_pk(conn, job_id)
            return list(
                conn.execute(
                    text("SELECT sequence FROM metrics WHERE job_pk = :p ORDER BY sequence"), {"p": pk}
                ).scalars()
            )

    def log_sequences(self, job_id: str) -> list[int]:
        """Every stored log sequence of the job, in order."""
        with self._engine.connect() as conn:
            pk = self._job_pk(conn, job_id)
            return list(
                conn.execute(text("SELECT sequence FROM logs WHERE job_pk = :p ORDER BY sequence"), {"p": pk}).scalars()
            )

    def metric_rows(self, job_id: str) -> list[tuple]:
        """(sequence, key, value, step, epoch, wall_time) rows of the job, in order."""
        with self._engine.connect() as conn:
            pk = self._job_pk(conn, job_id)
            return [
                tuple(r)
                for r in conn.execute(
                    text(
                        "SELECT sequence, key, value, step, epoch, wall_time FROM metrics WHERE job_pk = :p "
                        "ORDER BY sequence"
                    ),
                    {"p": pk},
                )
            ]

    def job_status(self, job_id: str) -> str:
        """The stored status name (`RUNNING`)."""
        with self._engine.connect() as conn:
            return conn.execute(text("SELECT status FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()

    def status_events(self, job_id: str) -> list[str]:
        """The stored status transitions' target statuses, oldest first."""
        with self._engine.connect() as conn:
            pk = self._job_pk(conn, job_id)
            return list(
                conn.execute(
                    text("SELECT to_status FROM status_events WHERE job_pk = :p ORDER BY sequence"), {"p": pk}
                ).scalars()
            )

    def cursor_row(self, job_id: str, stream: str = "metrics") -> dict[str, int]:
        """The stored ingest cursor row of one stream."""
        with self._engine.connect() as conn:
            pk = self._job_pk(conn, job_id)
            row = conn.execute(
                text(
                    "SELECT last_sequence, committed_count, duplicate_count, missing_count "
                    "FROM ingest_cursors WHERE job_pk = :p AND stream = :s"
                ),
                {"p": pk, "s": stream},
            ).one()
            return dict(row._mapping)


@contextlib.contextmanager
def metered_backend(database_url: str, data_dir: Path) -> Iterator[tuple[BackendProcess, int]]:
    """A running backend process that serves its Prometheus /metrics on a free port: (the process, the port)."""
    port = free_port()
    process = BackendProcess(database_url, data_dir, extra_env={"TP_METRICS_PORT": str(port)})
    process.start()
    try:
        yield process, port
    finally:
        process.close()
