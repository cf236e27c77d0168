"""Database engines and migrations: SQLite (embedded default) and PostgreSQL (production) through SQLAlchemy."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

SECRET_QUERY_PARAMETERS = frozenset({"password", "sslpassword"})
"""libpq connection parameters that are secrets (the password, the passphrase of the client key): a URL may carry
them in its query string (`?password=...`); `display_url` and `redact` show them as `***`."""

MASK = "***"

DEFAULT_CONNECT_TIMEOUT_S = 10
"""How long a PostgreSQL connection may take to open (libpq's `connect_timeout`) when DATABASE_URL sets none: a host
that accepts the connection and never answers stops the backend at start instead of hanging it."""


def with_connect_timeout(url: str) -> str:
    """`url` with `connect_timeout=10` (DEFAULT_CONNECT_TIMEOUT_S) added for PostgreSQL, unless it sets one."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: the start says so, in one line, where the database is opened
        return url
    if parsed.get_backend_name() != "postgresql" or "connect_timeout" in parsed.query:
        return url
    timeout = {"connect_timeout": str(DEFAULT_CONNECT_TIMEOUT_S)}
    return parsed.update_query_dict(timeout).render_as_string(hide_password=False)


DEFAULT_DATABASE_TIMEOUT_S = 30.0
"""TP_DATABASE_TIMEOUT_S's default: the longest a PostgreSQL statement may run, and how long the backend waits on a
database that does not answer before it fails the call UNAVAILABLE (see `create_db_engine`)."""

NOT_ANSWERING_GRACE_S = 3.0
"""How much longer than its statement_timeout the backend waits on a statement before it takes the database as not
answering (a statement PostgreSQL cancels fails with its own error first); at most a tenth of the timeout."""


def with_timeouts(url: str, timeout_s: float = DEFAULT_DATABASE_TIMEOUT_S) -> str:
    """`url` with the connect timeout of `with_connect_timeout` and, for PostgreSQL when `timeout_s` is more than 0,
    TCP keepalives and `tcp_user_timeout` that find a dead connection (a network partition, a host that is gone)
    within about `timeout_s`: keepalive probes start after a third of it without traffic, one every sixth, three
    unanswered close the connection, and data sent but not acknowledged for `timeout_s` closes it. Every parameter
    the URL sets keeps its value."""
    url = with_connect_timeout(url)
    try:
        parsed = make_url(url)
    except Exception:  # not a URL: the start says so
        return url
    if parsed.get_backend_name() != "postgresql" or timeout_s <= 0:
        return url
    defaults = {
        "keepalives": "1",
        "keepalives_idle": str(max(1, round(timeout_s / 3))),
        "keepalives_interval": str(max(1, round(timeout_s / 6))),
        "keepalives_count": "3",
        "tcp_user_timeout": str(max(1000, round(timeout_s * 1000))),
    }
    added = {key: value for key, value in defaults.items() if key not in parsed.query}
    if not added:
        return url
    return parsed.update_query_dict(added).render_as_string(hide_password=False)


def describe_error(error: BaseException, url: str) -> str:
    """The first line of a start failure's message, without the URL's secrets; a connection that timed out names
    the host and the timeout (and where to set it)."""
    orig = getattr(error, "orig", None)
    if type(orig).__name__ == "ConnectionTimeout" or type(error).__name__ == "ConnectionTimeout":
        parsed = make_url(url)
        timeout = parsed.query.get("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT_S))
        text = (
            f"(psycopg.errors.ConnectionTimeout) connection to server at {parsed.host or 'localhost'}:"
            f"{parsed.port or 5432} failed: no answer within {timeout} s (connect_timeout; the default is "
            f"{DEFAULT_CONNECT_TIMEOUT_S} s, DATABASE_URL's ?connect_timeout=N sets it)"
        )
    else:
        text = (str(error).splitlines() or [type(error).__name__])[0]
    return redact(text, url)


def display_url(url: str | URL) -> str:
    """`url` as it may be shown in a log line or an error: its password (`user:password@`) and its secret query
    parameters (`?password=`, `?sslpassword=`) are `***`."""
    parsed = make_url(url)
    query = {key: (MASK if key.lower() in SECRET_QUERY_PARAMETERS else value) for key, value in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", MASK)


def secrets_of(url: str | URL) -> list[str]:
    """The secrets `url` carries: its password and the values of its secret query parameters."""
    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy reads: nothing known to hide
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_QUERY_PARAMETERS:
            found.extend([value] if isinstance(value, str) else value)
    return [str(secret) for secret in found if secret]


def redact(text: str, url: str | URL) -> str:
    """`text` (an error message) with every secret of `url` replaced by `***`."""
    for secret in sorted(secrets_of(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (subscriptions, history) run beside the writer; synchronous=NORMAL in WAL mode keeps
    # every commit across a crash of the process (kill -9), losing at most the last commits on power loss.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _ensure_sqlite_directory(url: str) -> None:
    """Creates the directory of a SQLite database when missing, private (0700): the database holds every job's
    metrics and logs. One that exists keeps its mode."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(mode=0o700, parents=True, exist_ok=True)


POOL_SIZE = 8
"""PostgreSQL connections a backend process keeps open; as many more open under load (`max_overflow`)."""

POOL_CONNECTIONS = 2 * POOL_SIZE
"""The most PostgreSQL connections a backend process's pool opens."""


def create_db_engine(url: str, *, pool_size: int = POOL_SIZE, timeout_s: float = DEFAULT_DATABASE_TIMEOUT_S) -> Engine:
    """Creates an engine for `url`, with SQLite pragmas or a PostgreSQL connection pool (`pool_size` connections
    kept, as many more opened under load).

    On PostgreSQL, when `timeout_s` is more than 0: the server cancels a statement that runs longer
    (`statement_timeout`, unless the URL's `options` set one), and a statement the database has not answered
    within `timeout_s` and a little more (`NOT_ANSWERING_GRACE_S`: a server that does not answer, a network that
    holds the packets) has its connection closed by the backend (`_NotAnsweringGuard`): the call fails
    UNAVAILABLE (`DatabaseNotAnswering`), the pool drops its connections, and one WARNING says so. Migrations
    (`migrate`) open their own connections, without either bound.
    """
    parsed = make_url(url)
    _ensure_sqlite_directory(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {}
    options = parsed.query.get("options", "")
    if timeout_s > 0 and isinstance(options, str) and "statement_timeout" not in options:
        # connect_args win over the URL's query: the URL's own options are kept, ours added after them.
        connect_args["options"] = f"{options} -c statement_timeout={max(1, round(timeout_s * 1000))}".strip()
    # No pre-ping: it costs a round trip per checkout on the hot path. A connection that died with a database
    # restart fails its call once (UNAVAILABLE: clients retry) and the pool replaces it.
    engine = create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800, connect_args=connect_args
    )
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    if "statement_timeout" in connect_args.get("options", ""):
        event.listen(engine, "handle_error", _statement_timed_out(timeout_s))
    if timeout_s > 0:
        _NotAnsweringGuard(timeout_s, f"{parsed.host or 'localhost'}:{parsed.port or 5432}").watch(engine)
    return engine


class StatementTimedOut(OperationalError):
    """A statement PostgreSQL cancelled at its `statement_timeout` of TP_DATABASE_TIMEOUT_S (`timeout_s`): a lock held
    by something else (a VACUUM FULL, a migration), or a load the database cannot carry now (UNAVAILABLE, the
    message naming the setting)."""

    timeout_s: float = 0.0


def _statement_timed_out(timeout_s: float) -> Callable[[ExceptionContext], OperationalError | None]:
    def on_error(context: ExceptionContext) -> OperationalError | None:
        orig = context.original_exception
        if getattr(orig, "sqlstate", None) != "57014" or "statement timeout" not in str(orig):
            return None  # not ours: a cancel by an operator (pg_cancel_backend) stays an outage
        error = StatementTimedOut(context.statement, context.parameters, orig, hide_parameters=True)
        error.timeout_s = timeout_s
        return error

    return on_error


class DatabaseNotAnswering(OperationalError):
    """A statement the database did not answer within TP_DATABASE_TIMEOUT_S (and `NOT_ANSWERING_GRACE_S`): its
    connection was closed by the backend and the pool's connections dropped (UNAVAILABLE: clients retry)."""


_NOT_ANSWERED = "tp_not_answered"  # in a connection's pool record `info`: the guard closed it


class _NotAnsweringGuard:
    """Closes the connections of statements the database has not answered within a bound.

    A database that stops answering without closing its connections (a network partition, a frozen primary, a
    proxy that holds the packets) leaves libpq waiting for ever: keepalives and `tcp_user_timeout` end only the
    waits on a peer that is gone, a server-side `statement_timeout` only statements the server got. So each
    connection is armed when a statement, commit or rollback starts (`arm`: a dict write, no lock), and a watchdog
    thread looks every `tick` s: a connection whose last arming is older than the bound and which still waits on
    the server (libpq's transaction status ACTIVE) has its socket shut down, so libpq's wait ends with a lost
    connection, which SQLAlchemy reports as a disconnect (`_on_error` makes it `DatabaseNotAnswering` and drops the
    pool). A connection past the bound that waits on nothing (idle in its transaction) is left alone.
    """

    def __init__(self, timeout_s: float, where: str) -> None:
        self.bound_s = timeout_s + min(NOT_ANSWERING_GRACE_S, timeout_s / 10)
        self.timeout_s = timeout_s
        self.where = where
        self.tick = min(1.0, self.bound_s / 10)
        self.armed: dict[Any, tuple[float, dict[Any, Any]]] = {}
        self.not_answering_since: float | None = None
        from psycopg import pq  # only PostgreSQL engines have a guard

        self.active = pq.TransactionStatus.ACTIVE

    def watch(self, engine: Engine) -> None:
        """Arms the engine's connections on every statement, commit and rollback, and starts the watchdog (it
        ends when the engine is gone)."""
        event.listen(engine, "before_cursor_execute", self._before_execute)
        event.listen(engine, "commit", self._before_transaction_end)
        event.listen(engine, "rollback", self._before_transaction_end)
        event.listen(engine, "handle_error", self._on_error)
        event.listen(engine.pool, "connect", self._connected)
        event.listen(engine.pool, "reset", self._pool_reset)
        for name in ("checkin", "close", "detach"):
            event.listen(engine.pool, name, self._forget)
        event.listen(engine.pool, "invalidate", self._forget_invalidated)
        threading.Thread(
            target=_watchdog, args=(weakref.ref(self), self.tick), name="tp-backend-db-guard", daemon=True
        ).start()

    # --- the events (the caller's thread) -------------------------------------------------------------------

    def _before_execute(
        self, conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
    ) -> None:
        self.armed[cursor.connection] = (time.monotonic() + self.bound_s, conn.info)

    def _before_transaction_end(self, conn: Any) -> None:
        if conn.invalidated:  # nothing to send: SQLAlchemy only forgets the transaction
            return
        fairy = conn.connection
        self.armed[fairy.dbapi_connection] = (time.monotonic() + self.bound_s, fairy.info)

    def _pool_reset(self, dbapi_connection: Any, record: Any, reset_state: Any) -> None:
        self.armed[dbapi_connection] = (time.monotonic() + self.bound_s, record.info)

    def _forget(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            self.armed.pop(dbapi_connection, None)

    def _forget_invalidated(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self._forget(dbapi_connection, record)

    def _connected(self, dbapi_connection: Any, record: Any) -> None:
        # Which socket this connection is: the watchdog checks it before shutting a descriptor down.
        with _dup(dbapi_connection.pgconn.socket) as sock:
            record.info["tp_socket"] = _names(sock)
        if self.not_answering_since is not None:
            log.info(
                "the database at %s answers again (it did not for %.0f s)",
                self.where,
                time.monotonic() - self.not_answering_since,
            )
            self.not_answering_since = None

    def _on_error(self, context: ExceptionContext) -> OperationalError | None:
        conn = context.connection
        try:
            closed_here = conn is not None and not conn.invalidated and conn.info.pop(_NOT_ANSWERED, False)
        except Exception:  # no connection to look at
            return None
        if not closed_here:
            return None
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = True  # the others wait on the same database
        return DatabaseNotAnswering(
            context.statement,
            context.parameters,
            context.original_exception,
            hide_parameters=True,
            connection_invalidated=True,
        )

    # --- the watchdog's thread ------------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Closes the connections waiting on the server past their bound; forgets the idle ones past it."""
        for dbapi_connection, entry in list(self.armed.items()):
            deadline, info = entry
            if now < deadline:
                continue
            if self.armed.get(dbapi_connection) is entry:
                self.armed.pop(dbapi_connection, None)  # armed again when its next statement starts
            try:
                waiting = dbapi_connection.pgconn.transaction_status == self.active
            except Exception:  # closed meanwhile
                continue
            if waiting:
                self._close(dbapi_connection, info, now - deadline + self.bound_s)

    def _close(self, dbapi_connection: Any, info: dict[Any, Any], waited_s: float) -> None:
        try:
            with _dup(dbapi_connection.pgconn.socket) as sock:
                if _names(sock) != info.get("tp_socket"):
                    return  # the statement ended and its descriptor is another socket now
                info[_NOT_ANSWERED] = True
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed meanwhile: nothing waits on it
            return
        if self.not_answering_since is None:
            self.not_answering_since = time.monotonic() - waited_s
            log.warning(
                "the database at %s has not answered a statement for %.0f s (TP_DATABASE_TIMEOUT_S=%g): closing its "
                "connections; calls fail UNAVAILABLE until it answers again",
                self.where,
                waited_s,
                self.timeout_s,
            )
        else:
            log.debug("closed another connection to %s that waited %.0f s", self.where, waited_s)


def _watchdog(guard_ref: weakref.ref[_NotAnsweringGuard], tick: float) -> None:
    while True:
        time.sleep(tick)  # the watchdog's period: a bound is kept to within a tick
        guard = guard_ref()
        if guard is None:
            return
        guard.check(time.monotonic())
        del guard


def _dup(fd: int) -> socket.socket:
    return socket.socket(fileno=os.dup(fd))


def _names(sock: socket.socket) -> tuple[Any, Any]:
    return sock.getsockname(), sock.getpeername()


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """A write refused because the session is read-only (SQLSTATE 25006: a failover whose pooled connections still
    reach the old primary, now a standby, or `default_transaction_read_only` set and lifted) is handled as a lost
    connection: the pool drops every connection, so the next calls reconnect and find the writable server, and
    the call fails UNAVAILABLE (clients retry), where the pool kept the read-only sessions until `pool_recycle`
    (30 minutes) and every call failed INTERNAL."""
    if getattr(context.original_exception, "sqlstate", None) == "25006":
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = True


def alembic_config(url: str, migrations_dir: Path = MIGRATIONS_DIR) -> Config:
    """An Alembic configuration for `url` that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def revisions() -> list[str]:
    """This backend's migration revisions, oldest first (the last is its head)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


def target_revision(to: str) -> str:
    """The revision `tp-backend migrate --to` names: one of `revisions()`, or `head` (the newest).

    Raises:
        ValueError: an unknown revision, the message naming the known ones.
    """
    known = revisions()
    if to == "head":
        return known[-1]
    if to not in known:
        raise ValueError(
            f"--to {to}: no such revision; this backend knows {', '.join(known)} (or head, which is {known[-1]})"
        )
    return to


def current_revision(url: str) -> str | None:
    """The revision the database at `url` is at; None for a database no migration was applied to."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            heads = MigrationContext.configure(connection).get_current_heads()
    finally:
        engine.dispose()
    return ", ".join(sorted(heads)) or None


def migrate(url: str, to: str = "head") -> tuple[str | None, str]:
    """Upgrades or downgrades the database to revision `to` (`head`: every migration): the only way the schema is
    created or changed. Logs and returns the revision it was at (None: an empty database) and the one it is at.

    Raises:
        ValueError: `to` is not a revision of this backend (`target_revision`).
        SchemaError: the database is at a revision this backend does not know (a newer version migrated it).
    """
    target = target_revision(to)
    log.info("applying database migrations to %s", display_url(url))
    _ensure_sqlite_directory(url)
    with _migration_lock(url):
        return _migrate(url, target)


MIGRATION_LOCK_KEY = 0x74702D6D696772
"""The PostgreSQL advisory lock (per database) a backend holds while it migrates (`_migration_lock`)."""


@contextlib.contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """On PostgreSQL, holds the migration lock of the database (an advisory lock of a transaction kept open on a
    connection of its own, released when it ends, or when the process dies; a transaction's lock, not a session's,
    so a pooler in transaction mode cannot keep it): backends that migrate one database at once (the replicas of a
    rollout, each migrating on start) take turns, and each reads the revision once it holds the lock, so the later
    ones find the schema at head. Without it all but one failed (`duplicate key value violates unique constraint
    "pg_type_typname_nsp_index"`, a column that already exists). Logs once when it has to wait."""
    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            lock = {"key": MIGRATION_LOCK_KEY}
            if not connection.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), lock).scalar_one():
                log.info("another backend is migrating %s: waiting for it to finish", display_url(url))
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), lock)
            yield
    finally:
        engine.dispose()


def _migrate(url: str, target: str) -> tuple[str | None, str]:
    before = current_revision(url)
    known = revisions()
    if before is not None and before not in known:
        raise SchemaError(_newer_revision(display_url(url), before, known[-1]))
    config = alembic_config(url)
    if before is not None and known.index(target) < known.index(before):
        command.downgrade(config, target)
    else:
        command.upgrade(config, target)
    after = current_revision(url) or target
    if before == after:
        log.info("the database is already at %s%s: nothing to migrate", after, " (head)" if after == known[-1] else "")
    else:
        log.info("migrated the database from %s to %s", before or "no revision (an empty database)", after)
    return before, after


def _newer_revision(url: str, current: str, head: str) -> str:
    return (
        f"the database {url} is at revision {current}, which this backend does not know (a newer version migrated "
        f"it; this backend needs {head}): to roll it back, run `tp-backend migrate --to {head}` with the version that "
        f"migrated it, or run that version or a newer one"
    )


class SchemaError(RuntimeError):
    """The database's schema is not the one this backend's migrations make (it was started with migrations off)."""


def check_schema(engine: Engine, *, migrations_dir: Path = MIGRATIONS_DIR) -> None:
    """Checks that the database is at this backend's migration head, for a backend started with migrations off.

    `migrations_dir`: the migrations whose head is needed (another version's, in the tests of rolling back).

    Raises:
        SchemaError: saying what the database is at and what to run.
    """
    url = display_url(engine.url)
    script = ScriptDirectory.from_config(alembic_config(url, migrations_dir))
    heads = set(script.get_heads())
    with engine.connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    if current == heads:
        return
    fix = "run `tp-backend migrate` (or start without --no-migrate / TP_MIGRATE_ON_START=false)"
    if not current:
        raise SchemaError(f"the database {url} has no schema: no migration was applied to it; {fix}")
    known = {revision.revision for revision in script.walk_revisions()}
    if not current <= known:
        raise SchemaError(_newer_revision(url, ", ".join(sorted(current)), ", ".join(sorted(heads))))
    raise SchemaError(
        f"the database {url} is at revision {', '.join(sorted(current))}; this backend needs "
        f"{', '.join(sorted(heads))}: {fix}"
    )
