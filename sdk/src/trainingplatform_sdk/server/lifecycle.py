"""Starting and stopping a gRPC server of the platform: health checking and reflection for its services, the
listening port (plaintext or TLS), health SERVING once it serves and NOT_SERVING first when it stops, and the
process's loop that serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trainingplatform_sdk.server.reflection import enable_reflection
from trainingplatform_sdk.server.tls import TlsFiles

__all__ = [
    "LOG_FORMAT",
    "NON_UTF8_HEADER_INTERVAL_S",
    "GrpcServer",
    "NonUtf8HeaderFilter",
    "Stoppable",
    "configure_logging",
    "run_until_signal",
]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of every server process's log lines (on stderr)."""


class Stoppable(Protocol):
    """What `run_until_signal` stops: a started service."""

    async def stop(self) -> None:
        """Shuts the service down gracefully."""


class GrpcServer:
    """A `grpc.aio` server with the health service and reflection for the services it serves.

    The caller adds its servicers to `server`, then calls `bind`, `start` and, to shut down, `stop`.

    Args:
        service_names: The full names of the services served (`package.Service`); health reports each of them and
            "" (the whole server), reflection lists them with health and reflection.
        interceptors: The server's interceptors, outermost first.
        options: Channel arguments (`options.server_options`).
        max_concurrent_rpcs: The most calls the server runs at once, streams included; past it a call is answered
            RESOURCE_EXHAUSTED at once. None: no limit.
    """

    def __init__(
        self,
        service_names: Sequence[str],
        *,
        interceptors: Sequence[grpc.aio.ServerInterceptor],
        options: Sequence[tuple[str, int]],
        max_concurrent_rpcs: int | None = None,
    ) -> None:
        self.service_names = tuple(service_names)
        self.server = grpc.aio.server(
            interceptors=list(interceptors), options=list(options), maximum_concurrent_rpcs=max_concurrent_rpcs
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection((*self.service_names, health.SERVICE_NAME), self.server)
        self.port = 0

    def bind(self, address: str, tls: TlsFiles | None = None) -> int:
        """Listens on `address` (`host:port`; port 0 picks a free one), with TLS when `tls` is given.

        Returns:
            The port bound.

        Raises:
            OSError: The address cannot be bound, or a TLS file cannot be read or does not hold what it should
                (checked first: gRPC refuses such a pair the way it refuses a port in use).
        """
        port: int
        if tls is not None:
            try:
                tls.check()
            except ValueError as error:
                raise OSError(str(error)) from None
        try:
            if tls is not None:
                port = self.server.add_secure_port(address, tls.credentials())
            else:
                port = self.server.add_insecure_port(address)
        except RuntimeError as error:  # grpc's "Failed to bind to address": with so_reuseport off, a port in use
            raise OSError(f"cannot listen on {address}: the port is in use or the address is not local") from error
        if port == 0:
            raise OSError(f"cannot listen on {address}: the port is in use or the address is not local")
        self.port = port
        return port

    async def start(self, *, before_serving: Callable[[], object] | None = None) -> None:
        """Starts serving, then turns health SERVING for "" and every service.

        Args:
            before_serving: Runs once the server takes calls and before health reports SERVING (what the services
                need running before probes see the server ready).
        """
        await self.server.start()
        if before_serving is not None:
            before_serving()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float, *, drain: Callable[[], Awaitable[object]] | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING for "" and every service first (probes and load balancers stop
        sending calls), then `drain`, then the server stops, letting open calls finish within `grace_s` seconds.

        Args:
            grace_s: How long calls still open may run before they are cancelled.
            drain: What the service ends while the server still answers (refusing new work, closing streams).
        """
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if drain is not None:
            await drain()
        await self.server.stop(grace_s)

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", *self.service_names):
            await self.health.set(name, status)


#: Longest wait, after a service stopped, for the tasks still finishing (see `_let_tasks_finish`).
FINAL_TASKS_WAIT_S = 1.0


async def run_until_signal(start: Awaitable[Stoppable]) -> None:
    """Awaits `start` (a coroutine that starts a service), serves until SIGTERM or SIGINT, then stops the service.

    Args:
        start: Starts the service and returns it; its errors (OSError for a port taken, ...) propagate.
    """
    running = await start
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await running.stop()
    await _let_tasks_finish(FINAL_TASKS_WAIT_S)


async def _let_tasks_finish(timeout: float) -> None:
    """Waits up to `timeout` seconds for the loop's other tasks. A call a client cancelled while the server
    stopped leaves gRPC's coroutine for it finishing after `server.stop` returned; the loop's teardown would
    cancel it mid-way, which gRPC logs as an unhandled error of the servicer."""
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)


#: How often a header value that is not valid UTF-8 is logged at most (see `NonUtf8HeaderFilter`).
NON_UTF8_HEADER_INTERVAL_S = 60.0


class NonUtf8HeaderFilter(logging.Filter):
    """Drops gRPC's `Invalid encoding on b'<value>'` records and logs, at most once per `interval_s`, a WARNING
    that does not show the value (with the count of such records since the last one: those after the last line
    are counted in the next, if any).

    gRPC logs such a record, with a traceback, for every call with a header value that is not valid UTF-8 (on any
    method, the health check included; it then reads the value as Latin-1): the value is often a token, and any
    client can send one on every call.

    Args:
        log: Where the line that replaces them goes.
        interval_s: The least time between two such lines.
    """

    def __init__(self, log: logging.Logger, interval_s: float = NON_UTF8_HEADER_INTERVAL_S) -> None:
        super().__init__()
        self._log = log
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._next_line_at = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        """False for gRPC's record of a value that is not UTF-8 (logging the line that replaces it when due)."""
        if not str(record.msg).startswith("Invalid encoding on"):
            return True
        now = time.monotonic()
        with self._lock:
            self._dropped += 1
            if now < self._next_line_at:
                return False
            count, self._dropped = self._dropped, 0
            self._next_line_at = now + self._interval_s
        self._log.warning(
            "a call had a header value that is not valid UTF-8 (value not shown; read as Latin-1): %d such call(s) "
            "since the last line like this, one line per %.0f s at most",
            count,
            self._interval_s,
        )
        return False


def configure_logging(level: int | str, log_format: str = LOG_FORMAT) -> None:
    """Sends the process's log records of `level` and above to stderr as `log_format` lines, and replaces gRPC's
    records of header values that are not UTF-8 (which show the value, a token as often as not) with
    `NonUtf8HeaderFilter`'s line."""
    logging.basicConfig(level=level, format=log_format, stream=sys.stderr)
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(existing, NonUtf8HeaderFilter) for existing in grpc_log.filters):
        grpc_log.addFilter(NonUtf8HeaderFilter(logging.getLogger(__name__)))
