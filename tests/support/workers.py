"""`tp-backend --workers N` for tests: the supervisor as a BackendProcess, its workers, and which worker committed
what (the backend instance in each PostgreSQL notification)."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import grpc
import psycopg
from sqlalchemy import text

from support.backend import BackendProcess

WORKER_LINE = re.compile(r"worker (\d+) \(pid (\d+)\) serves as instance ([0-9a-f]+)")


class WorkersBackend(BackendProcess):
    """A `tp-backend --workers N` supervisor; `start` returns once every worker serves."""

    def __init__(self, database_url: str, data_dir: Path, workers: int = 2, **kwargs: object) -> None:
        extra_args = ["--workers", str(workers), *kwargs.pop("extra_args", [])]  # type: ignore[misc]
        super().__init__(database_url, data_dir, extra_args=extra_args, **kwargs)  # type: ignore[arg-type]
        self.workers = workers
        self._log_offset = 0

    def start(self, timeout: float = 60) -> None:
        self._log_offset = len(self.log_text())
        super().start(timeout)
        self.wait_log(f"with {self.workers} workers", timeout)

    def wait_log(self, fragment: str, timeout: float = 60) -> str:
        """Waits until the log since the last start holds `fragment`; returns that log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log_text()[self._log_offset :]
            if fragment in log:
                return log
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"supervisor exited with {self.process.returncode}:\n{log[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {fragment!r} in the log after {timeout}s:\n{log[-3000:]}")
            time.sleep(0.05)

    def serving_workers(self) -> dict[int, tuple[int, str]]:
        """Worker number -> (pid, backend instance id), the latest of each since the last start."""
        found: dict[int, tuple[int, str]] = {}
        for match in WORKER_LINE.finditer(self.log_text()[self._log_offset :]):
            found[int(match[1])] = (int(match[2]), match[3])
        return found

    def kill_worker(self, index: int) -> int:
        """SIGKILL to one worker; returns its pid."""
        pid = self.serving_workers()[index][0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def job_pk(self, job_id: str) -> int:
        """The job's internal key (what notifications name)."""
        with self._engine.connect() as conn:
            return conn.execute(text("SELECT id FROM jobs WHERE job_id = :j"), {"j": job_id}).scalar_one()


def separate_channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (channels of one process otherwise share one per address): each
    lands on whichever worker the kernel picks."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


class Notifications(threading.Thread):
    """Listens to `tp_telemetry` on the database and keeps which backend instance committed for which job."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True, name="notifications")
        self._conn = psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
        self._conn.execute("LISTEN tp_telemetry")
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._seen: list[tuple[float, str, int]] = []

    def run(self) -> None:
        while not self._closing.is_set():
            for notify in self._conn.notifies(timeout=0.2):
                instance, _, jobs = notify.payload.partition(":")
                with self._lock:
                    self._seen += [(time.monotonic(), instance, int(pk)) for pk in jobs.split(",") if pk]

    def instances(self, job_pk: int | None = None, since: float = 0.0) -> set[str]:
        """The instances that committed (for `job_pk`, after `since`, a `time.monotonic()`)."""
        with self._lock:
            return {i for at, i, pk in self._seen if at >= since and (job_pk is None or pk == job_pk)}

    def close(self) -> None:
        self._closing.set()
        self.join(5)
        self._conn.close()
