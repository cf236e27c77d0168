"""A PostgreSQL database for the database-fault tests (tests/reliability): owned by a role that is not a superuser,
as an operator's would be (PostgreSQL lets superusers past `CONNECTION LIMIT`), and changed from outside with the
admin connection (read-only, no connections, its sessions killed)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import create_engine, text

from support.backend import PG_ADMIN_URL

ROLE = "tp_test_app"


def admin(sql: str, **params: str) -> None:
    """Runs `sql` (with its bound `params`) as the PostgreSQL superuser, outside any transaction."""
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


@contextlib.contextmanager
def app_database() -> Iterator[tuple[str, str]]:
    """A fresh database owned by a role that is not a superuser: (its name, the URL the backend connects with)."""
    name = f"tp_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": ROLE}).first() is None:
                with contextlib.suppress(Exception):  # another test process made it meanwhile
                    conn.execute(text(f'CREATE ROLE "{ROLE}" LOGIN'))
            conn.execute(text(f'CREATE DATABASE "{name}" OWNER "{ROLE}"'))
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgres@", f"{ROLE}@", 1)
        yield name, f"{base}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


def terminate(name: str) -> None:
    """Kills every session connected to the database `name` (`pg_terminate_backend`), as a failover would."""
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()", d=name
    )
