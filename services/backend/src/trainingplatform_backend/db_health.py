"""The database check behind the backend's gRPC health: NOT_SERVING while PostgreSQL does not answer.

A backend whose database is unreachable can only fail its calls; its health (what readiness probes and load
balancers ask) says so, and says SERVING again once the database answers. The check is `SELECT 1` on a connection
of its own (not one of the pool's, which may all be busy under load), kept open between checks; a kept connection
that fails (the database restarted, a failover) is replaced at once within the same check, so only a database that
does not take a fresh connection turns the health NOT_SERVING. Every check is bounded by its timeout, connecting
included (libpq's `connect_timeout`, 10 s by default in DATABASE_URL, would hold it much longer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import make_url

from trainingplatform_backend import db

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL_S = 5.0
"""TP_DATABASE_CHECK_INTERVAL_S's default: a Kubernetes readiness probe every 5 s sees an outage within a probe."""

DEFAULT_CHECK_TIMEOUT_S = 2.0
"""TP_DATABASE_CHECK_TIMEOUT_S's default: `SELECT 1` answers in milliseconds on a database that works."""

_ABORT_WAIT_S = 1.0
"""How long a check whose socket was shut down may take to notice it before it is cancelled."""


class DatabaseHealth:
    """Checks every `interval_s` that PostgreSQL answers, and calls `on_change(False)` when it stops answering and
    `on_change(True)` when it answers again: one WARNING and one INFO line, naming the host but no secret.

    Args:
        url: The SQLAlchemy URL of the PostgreSQL database (its secrets stay out of the log lines).
        interval_s: Seconds between the end of one check and the start of the next.
        timeout_s: How long one check may take, connecting included.
        on_change: Sets the health (`True`: SERVING).
    """

    def __init__(
        self, url: str, *, interval_s: float, timeout_s: float, on_change: Callable[[bool], Awaitable[None]]
    ) -> None:
        parsed = make_url(url)
        self._dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self._url = url
        self.where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._on_change = on_change
        self._conn: Any = None  # psycopg.AsyncConnection, kept between checks
        self._check: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.down_since: float | None = None

    def start(self) -> None:
        """Starts checking in the background; the first check is one interval after the start."""
        self._task = asyncio.create_task(self._run(), name="database-health")

    async def stop(self) -> None:
        """Stops checking (no `on_change` is called after it returns) and closes the check's connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._abandon_check()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            failure = await self.check()
            if failure is not None and self.down_since is None:
                self.down_since = time.monotonic()
                log.warning(
                    "the database at %s does not answer its health check (%s): health NOT_SERVING until it does",
                    self.where,
                    failure,
                )
                await self._on_change(False)
            elif failure is None and self.down_since is not None:
                log.info(
                    "the database at %s answers again (it did not for %.0f s): health SERVING",
                    self.where,
                    time.monotonic() - self.down_since,
                )
                self.down_since = None
                await self._on_change(True)

    async def check(self) -> str | None:
        """Runs one check; returns None when the database answered, otherwise why it did not (no secrets)."""
        self._check = asyncio.ensure_future(self._select_one())
        done, _ = await asyncio.wait({self._check}, timeout=self.timeout_s)
        if not done:
            await self._abandon_check()
            return f"no answer within {self.timeout_s:g} s (TP_DATABASE_CHECK_TIMEOUT_S)"
        error = self._check.exception()
        self._check = None
        if error is None:
            return None
        await self._close()
        if type(error).__name__ == "ConnectionTimeout":
            return f"no connection within {self.timeout_s:g} s (TP_DATABASE_CHECK_TIMEOUT_S)"
        return db.describe_error(error, self._url)

    async def _select_one(self) -> None:
        import psycopg

        if self._conn is not None:
            try:
                await self._conn.execute("SELECT 1")
                return
            except psycopg.Error:  # its session ended (a restart, a failover): a fresh connection says more
                await self._close()
        # The check's timeout bounds the connect (libpq's connect_timeout, whole seconds and at least 2, a second
        # later: a backstop), not DATABASE_URL's connect_timeout.
        self._conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(2, math.ceil(self.timeout_s) + 1)
        )
        await self._conn.execute("SELECT 1")

    async def _abandon_check(self) -> None:
        """Ends a check still running: a statement's wait ends when its socket is shut down (cancelling it would
        have psycopg ask the server to cancel the statement first, on a network that does not answer); a connect is
        cancelled."""
        check, self._check = self._check, None
        if check is not None and not check.done():
            if self._conn is not None:
                with (
                    contextlib.suppress(OSError, ValueError),
                    socket.socket(fileno=os.dup(self._conn.fileno())) as sock,
                ):
                    sock.shutdown(socket.SHUT_RDWR)
                await asyncio.wait({check}, timeout=_ABORT_WAIT_S)
            check.cancel()
            await asyncio.wait({check})  # not `await check`: a cancel of the caller still reaches the caller
        if check is not None and check.done() and not check.cancelled():
            check.exception()  # retrieved: it is the reason already given, or nothing
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
