"""Database engines and migrations: SQLite (embedded default) and PostgreSQL (production) through SQLAlchemy."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url

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
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


POOL_SIZE = 8
"""PostgreSQL connections a backend process keeps open; as many more open under load (`max_overflow`)."""

POOL_CONNECTIONS = 2 * POOL_SIZE
"""The most PostgreSQL connections a backend process's pool opens."""


def create_db_engine(url: str, *, pool_size: int = POOL_SIZE) -> Engine:
    """Creates an engine for `url`, with SQLite pragmas or a PostgreSQL connection pool (`pool_size` connections
    kept, as many more opened under load)."""
    parsed = make_url(url)
    _ensure_sqlite_directory(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it costs a round trip per checkout on the hot path. A connection that died with a database
    # restart fails its call once (UNAVAILABLE: clients retry) and the pool replaces it.
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800)
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    return engine


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """A write refused because the session is read-only (SQLSTATE 25006: a failover whose pooled connections still
    reach the old primary, now a standby, or `default_transaction_read_only` set and lifted) is handled as a lost
    connection: the pool drops every connection, so the next calls reconnect and find the writable server, and
    the call fails UNAVAILABLE (clients retry), where the pool kept the read-only sessions until `pool_recycle`
    (30 minutes) and every call failed INTERNAL."""
    if getattr(context.original_exception, "sqlstate", None) == "25006":
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = True


def alembic_config(url: str) -> Config:
    """An Alembic configuration for `url` that needs no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Applies every pending migration: the only way the schema is created or changed."""
    log.info("applying database migrations to %s", display_url(url))
    _ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), "head")


class SchemaError(RuntimeError):
    """The database's schema is not the one this backend's migrations make (it was started with migrations off)."""


def check_schema(engine: Engine) -> None:
    """Checks that the database is at this backend's migration head, for a backend started with migrations off.

    Raises:
        SchemaError: saying what the database is at and what to run.
    """
    url = display_url(engine.url)
    script = ScriptDirectory.from_config(alembic_config(url))
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
        raise SchemaError(
            f"the database {url} is at revision {', '.join(sorted(current))}, which this backend does not know "
            f"(a newer version migrated it); run the version that did, or a newer one"
        )
    raise SchemaError(
        f"the database {url} is at revision {', '.join(sorted(current))}; this backend needs "
        f"{', '.join(sorted(heads))}: {fix}"
    )
