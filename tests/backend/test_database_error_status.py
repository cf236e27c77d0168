"""The backend's one mapping of errors to status codes (`interceptors.status_of`) tells a database that cannot be
reached (UNAVAILABLE: retry later) from a statement the database refuses (INTERNAL: retrying cannot help, and the
server log has it). Both are SQLAlchemy OperationalErrors, raised here by real databases."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from support.backend import free_port, postgres_database
from trainingplatform_backend.interceptors import status_of


def raised(action: Callable[[], object]) -> OperationalError:
    with pytest.raises(OperationalError) as error:
        action()
    return error.value


def test_postgres_refusing_a_statement_with_too_many_parameters_is_internal_not_unavailable():
    with postgres_database() as url:
        engine = create_engine(url)
        try:
            count = 70_000  # above libpq's 65,535 parameters of one statement
            statement = text("SELECT 1 WHERE 1 IN (" + ", ".join(f":p{i}" for i in range(count)) + ")")
            with engine.connect() as conn:
                error = raised(lambda: conn.execute(statement, {f"p{i}": i for i in range(count)}))
                assert status_of(error)[0] == grpc.StatusCode.INTERNAL, status_of(error)
                # The connection is still fine: nothing was unavailable.
                assert conn.execute(text("SELECT 2")).scalar() == 2
        finally:
            engine.dispose()


def test_postgres_that_cannot_be_reached_or_ends_the_session_is_unavailable():
    unreachable = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/postgres")
    assert status_of(raised(unreachable.connect))[0] == grpc.StatusCode.UNAVAILABLE
    with postgres_database() as url:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                error = raised(lambda: conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())")))
            assert status_of(error) == (
                grpc.StatusCode.UNAVAILABLE,
                "the backend's database is unavailable; retry later",
            )
        finally:
            engine.dispose()


def test_sqlite_refusing_a_statement_is_internal_and_a_locked_database_unavailable(tmp_path: Path):
    path = tmp_path / "db.sqlite"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.connect() as conn:
            error = raised(lambda: conn.execute(text("SELECT * FROM no_such_table")))
            assert status_of(error)[0] == grpc.StatusCode.INTERNAL
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            conn.commit()
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            with engine.connect() as conn:
                locked = raised(lambda: conn.execute(text("INSERT INTO t VALUES (1)")))
            assert status_of(locked)[0] == grpc.StatusCode.UNAVAILABLE
        finally:
            holder.close()
    finally:
        engine.dispose()
