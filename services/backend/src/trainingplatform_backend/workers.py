"""`tp-backend --workers N`: N server processes on one port, under a supervisor.

One backend process runs Python on about one core. With `--workers N` (TP_BACKEND_WORKERS) `tp-backend` becomes a
supervisor: it applies the migrations once, then starts N worker processes (`tp-backend` again, with
TP_BACKEND_WORKER=1) that each serve the same port with SO_REUSEPORT, so the kernel spreads the connections over
them, each with its own event loop and database connections. The supervisor serves no call itself (only `/metrics`
of every worker, when TP_METRICS_PORT is set).

The workers are replicas of the backend on one host, so what makes several replicas correct makes them correct,
and it needs PostgreSQL (SQLite takes one writing process: more than one worker is refused):
- exactly-once and the resume cursor live in the database (the cursor rows are locked in the commit), so a job's
  streams may land on any worker, and a stream resumed on another worker continues where the first committed;
- every commit sends NOTIFY and every worker LISTENs, so a subscription on one worker sees every worker's commits;
- the dispatcher of every worker takes a queued job only with a claim in the jobs table (one wins), and the fence
  of superseded dispatch attempts is read from the database; every worker also checks the trainers' leases, and a
  job failed by two workers at once is failed once (the transition is conditional);
- per worker, not per backend: the limits of open calls (TP_MAX_STREAMS_PER_JOB, TP_MAX_SUBSCRIPTIONS_PER_CALLER,
  TP_MAX_CONCURRENT_RPCS, TP_MAX_CONCURRENT_STREAMS) and the subscribers' buffers (TP_SUBSCRIBER_BUFFER_POINTS).

The port: with SO_REUSEPORT a worker would also join any other server of the same user on that port, at random.
So the supervisor first takes lock files of the listen address (a second `--workers` supervisor on the same host
and port fails on them, as does one on 0.0.0.0 or :: and the same port; they are removed on exit) and checks that
nothing listens there (a one-process backend, anything else), and says so in one line; a one-process backend started
later fails to bind, as before.

Lifecycle: a worker that dies is restarted after a delay (0.5 s, doubling up to 30 s; back to 0.5 s once a worker
has served for a minute), and each death is logged with its exit code or signal. SIGTERM or SIGINT (also while the
workers are still being started: no more are started): every worker gets SIGTERM and drains (its own graceful
shutdown: everything received is committed), and the supervisor exits 0 once all are gone. Workers get SIGTERM
when the supervisor dies, however it dies (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType

from trainingplatform_sdk.server.processes import parent_death_signal

from trainingplatform_backend import db
from trainingplatform_backend import settings as settings_module
from trainingplatform_backend.settings import Settings

log = logging.getLogger("trainingplatform_backend.workers")

WORKER_ENV = "TP_BACKEND_WORKER"
"""Set to 1 in each worker: it serves with SO_REUSEPORT, applies no migration and serves no `/metrics`."""

WORKER_INDEX_ENV = "TP_BACKEND_WORKER_INDEX"
"""The worker's number, 0 to N-1 (kept across its restarts), in its log lines."""

READY_FD_ENV = "TP_BACKEND_READY_FD"
"""The pipe a worker writes one byte to once it serves."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where the workers' Prometheus metrics meet (set by the supervisor when TP_METRICS_PORT is set)."""

RESTART_FIRST_DELAY_S = 0.5
RESTART_MAX_DELAY_S = 30.0
STABLE_AFTER_S = 60.0
"""A worker that served this long before it died is restarted after the first delay again."""
POLL_S = 0.2
STOP_MARGIN_S = 20.0
"""How long a draining worker may take beyond TP_SHUTDOWN_GRACE_S before it is killed."""


def is_worker() -> bool:
    """Whether this process is a worker of a `--workers` supervisor."""
    return os.environ.get(WORKER_ENV) == "1"


def worker_index() -> int:
    """This worker's number (0 outside a supervisor)."""
    try:
        return int(os.environ.get(WORKER_INDEX_ENV, "0"))
    except ValueError:
        return 0


def report_ready() -> None:
    """Tells the supervisor that this worker serves; does nothing outside a supervisor."""
    fd = os.environ.pop(READY_FD_ENV, "")
    if fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), b"1")
            os.close(int(fd))


def refusal(settings: Settings) -> str:
    """Why these settings cannot run several workers, in one sentence that says what to do; '' when they can."""
    if settings.workers <= 1:
        return ""
    if settings.effective_database_url.startswith("sqlite"):
        return (
            f"--workers {settings.workers} needs PostgreSQL: SQLite takes one writing process; set DATABASE_URL to a "
            "PostgreSQL database, or run one worker (--workers 1)"
        )
    if settings.listen.rpartition(":")[2] in ("", "0"):
        return f"--workers {settings.workers} needs a fixed port to share: --listen host:port with a port other than 0"
    return ""


def supervise(settings: Settings, argv: Sequence[str]) -> int:
    """Runs the backend as `settings.workers` worker processes until SIGTERM or SIGINT; returns the exit code.

    Args:
        settings: The loaded settings (`refusal` must be '' for them).
        argv: The command line the workers get (the supervisor's own: they read the same flags and environment).

    Raises:
        OSError: the port is taken, or a worker cannot be started.
        SQLAlchemyError: the migrations failed.
    """
    # The token files are written once here, before N workers would race to create them.
    settings = settings_module.ensure_frontend_token(settings_module.ensure_internal_token(settings))
    with claim_port(settings.listen):
        migrate = settings.migrate_on_start
        # The metrics port is bound before the migrations: a port in use is said at once.
        return Supervisor(settings, argv).run(
            before_workers=(lambda: db.migrate(settings.effective_database_url)) if migrate else None
        )


_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})
"""Listen hosts that cover every address of the host."""


@contextlib.contextmanager
def claim_port(listen: str) -> Iterator[None]:
    """Holds the listen address for this supervisor's workers, then checks that nothing listens there. The locks are
    files, per user (only the same user's sockets can share a port): a lock of the port, exclusive for a wildcard
    host (0.0.0.0, ::), which covers every address, and shared for one address, plus an exclusive lock of that
    address; so 127.0.0.1:P and 127.0.0.2:P run side by side, while 0.0.0.0:P excludes both. The lock files are
    removed when the supervisor ends (the port's by its last holder).

    Raises:
        OSError: another supervisor holds the address, or something listens on it.
    """
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    directory = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    prefix = f"tp-backend-{os.getuid()}"
    with contextlib.ExitStack() as held:
        port_path = directory / f"{prefix}-port-{port}.lock"
        held.callback(_release, port_path, _lock(port_path, listen, shared=host not in _WILDCARDS))
        if host not in _WILDCARDS:
            key = re.sub(r"[^A-Za-z0-9.]+", "_", host)
            address_path = directory / f"{prefix}-{key}-port-{port}.lock"
            held.callback(_release, address_path, _lock(address_path, listen, shared=False))
        if _port_in_use(host, int(port)):
            raise OSError(f"cannot listen on {listen}: the port is in use or the address is not local")
        yield


def _lock(path: Path, listen: str, *, shared: bool) -> int:
    """Opens and locks `path` (flock, shared or exclusive); returns its descriptor.

    Raises:
        OSError: another supervisor holds it.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OSError(f"cannot listen on {listen}: another tp-backend --workers serves it") from None
        try:
            held, named = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            named = None
        if named is not None and (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
            return fd
        os.close(fd)  # its holder removed it between the open and the lock: the lock of a file nobody finds


def _release(path: Path, fd: int) -> None:
    """Removes a lock file if no one else holds it (a shared holder that remains keeps it), then closes it. A
    supervisor that opened it meanwhile sees it gone once it has the lock, and opens a new one."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass
    else:
        with contextlib.suppress(OSError):
            path.unlink()
    os.close(fd)


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on `host:port` (or the address is not local): a plain bind fails."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError:
        return True
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a connection in TIME_WAIT is no listener
        try:
            sock.bind(address)
        except OSError:
            return True
    return False


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Worker:
    """One worker slot: its process now, and when it is started again after a death."""

    index: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready: bool = False
    started_at: float = 0.0
    delay_s: float = RESTART_FIRST_DELAY_S
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts the workers, restarts the ones that die, stops them all on SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.workers = [_Worker(index) for index in range(settings.workers)]
        self._env = dict(os.environ)
        self._stopping = False
        self._preexec = parent_death_signal()
        self._metrics: ModuleType | None = None
        self._metrics_dir = ""

    def run(self, before_workers: Callable[[], object] | None = None) -> int:
        """Serves until SIGTERM or SIGINT; returns the exit code (1 when the workers could not start).

        `before_workers` (the migrations) runs once `/metrics` is served, before the first worker starts."""
        try:
            self._serve_metrics()
            if before_workers is not None:
                before_workers()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
            for worker in self.workers:
                if self._stopping:  # SIGTERM while starting them: no more; the started ones drain below
                    log.info(
                        "signalled while starting the workers: %d of %d started",
                        sum(w.process is not None for w in self.workers),
                        len(self.workers),
                    )
                    break
                self._spawn(worker)
            if not self._wait_all_ready():
                self._stop()
                return 1
            if not self._stopping:
                log.info(
                    "serving on %s with %d workers (pids %s)",
                    self.settings.listen,
                    len(self.workers),
                    " ".join(str(w.process.pid) for w in self.workers if w.process is not None),
                )
            while not self._stopping:
                self._step()
            return self._stop()
        finally:
            for worker in self.workers:
                self._close_ready(worker)
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    # --- metrics ---------------------------------------------------------------------------------------

    def _serve_metrics(self) -> None:
        """With TP_METRICS_PORT: the workers write their metrics into one directory, the supervisor serves them."""
        port = int(getattr(self.settings, "metrics_port", 0) or 0)
        if port <= 0:
            return
        try:
            metrics = importlib.import_module("trainingplatform_backend.metrics")
        except ModuleNotFoundError:
            log.warning("TP_METRICS_PORT is set but this backend has no metrics module: no /metrics")
            return
        self._metrics_dir = tempfile.mkdtemp(prefix="tp-backend-metrics-")
        os.environ[MULTIPROC_ENV] = self._metrics_dir
        self._env[MULTIPROC_ENV] = self._metrics_dir
        host = getattr(self.settings, "metrics_host", "") or self.settings.listen.rpartition(":")[0].strip("[]")
        metrics.serve_metrics(port, host or "0.0.0.0")
        self._metrics = metrics

    def _worker_gone(self, pid: int) -> None:
        mark = getattr(self._metrics, "mark_process_dead", None)
        if mark is not None:
            with contextlib.suppress(Exception):
                mark(pid)

    # --- workers ---------------------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> subprocess.Popen[bytes]:
        read_fd, write_fd = os.pipe()
        env = {**self._env, WORKER_ENV: "1", WORKER_INDEX_ENV: str(worker.index), READY_FD_ENV: str(write_fd)}
        try:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "trainingplatform_backend.server", *self.argv],
                env=env,
                pass_fds=(write_fd,),
                preexec_fn=self._preexec,  # two system calls, looked up before the fork
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        worker.ready_fd = read_fd
        worker.ready = False
        worker.started_at = time.monotonic()
        worker.restart_at = None
        return worker.process

    def _close_ready(self, worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _read_ready(self, timeout: float) -> None:
        """Waits up to `timeout` for workers to report that they serve."""
        waiting = {w.ready_fd: w for w in self.workers if w.ready_fd is not None}
        if not waiting:
            time.sleep(timeout)
            return
        readable, _, _ = select.select(list(waiting), [], [], timeout)
        for fd in readable:
            worker = waiting[fd]
            if os.read(fd, 16) and worker.process is not None:
                worker.ready = True
                log.info("worker %d (pid %d) serving", worker.index, worker.process.pid)
            self._close_ready(worker)  # one byte, or the end of the pipe: the worker exited

    def _wait_all_ready(self) -> bool:
        """Waits until every worker serves (True), or one exits first (False). A signal ends the wait (True)."""
        while not self._stopping:
            self._read_ready(POLL_S)
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is not None:
                    log.error(
                        "cannot start: worker %d %s before it served (its log lines above say why)",
                        worker.index,
                        _describe_exit(worker.process.returncode),
                    )
                    return False
            if all(w.ready for w in self.workers):
                return True
        return True

    def _step(self) -> None:
        """One round: notes who serves, restarts the dead whose delay is over."""
        self._read_ready(POLL_S)
        now = time.monotonic()
        for worker in self.workers:
            if self._stopping:
                return
            if worker.process is not None and worker.process.poll() is not None:
                self._died(worker, now)
            if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
                try:
                    process = self._spawn(worker)
                except OSError as error:
                    log.error("cannot restart worker %d: %s", worker.index, error)
                    self._schedule_restart(worker, now)
                else:
                    log.info("worker %d restarted (pid %d)", worker.index, process.pid)

    def _died(self, worker: _Worker, now: float) -> None:
        process = worker.process
        assert process is not None
        self._close_ready(worker)
        self._worker_gone(process.pid)
        worker.process = None
        served_s = now - worker.started_at
        if served_s >= STABLE_AFTER_S:
            worker.delay_s = RESTART_FIRST_DELAY_S
        log.warning(
            "worker %d (pid %d) %s after %.1f s; restarting it in %.1f s",
            worker.index,
            process.pid,
            _describe_exit(process.returncode),
            served_s,
            worker.delay_s,
        )
        self._schedule_restart(worker, now)

    def _schedule_restart(self, worker: _Worker, now: float) -> None:
        worker.restart_at = now + worker.delay_s
        worker.delay_s = min(worker.delay_s * 2, RESTART_MAX_DELAY_S)

    def _stop(self) -> int:
        """SIGTERM to every worker, then waits for their graceful shutdown; kills one that overstays. Returns 0, or
        1 when a worker had to be killed."""
        alive = [w for w in self.workers if w.alive]
        log.info(
            "stopping %d workers: each drains its streams (grace %.1f s)", len(alive), self.settings.shutdown_grace_s
        )
        for worker in alive:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        code = 0
        for worker in alive:
            process = worker.process
            assert process is not None
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %d (pid %d) did not stop in time: killed", worker.index, process.pid)
                process.kill()
                process.wait()
                code = 1
            self._worker_gone(process.pid)
        log.info("stopped")
        return code
