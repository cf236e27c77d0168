"""TP_DATABASE_TIMEOUT_S on real PostgreSQL connections: TCP keepalives and `tcp_user_timeout` reach the socket,
the server cancels a statement that runs longer (`statement_timeout`), a connection idle in its transaction for
longer is left alone, and whatever the URL sets itself wins over these defaults. A database that stops answering
is tested end to end in tests/reliability/test_database_stall.py."""

from __future__ import annotations

import socket
import time
from typing import Any

import grpc
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from support.backend import postgres_database
from trainingplatform_backend import db
from trainingplatform_backend.interceptors import status_of
from trainingplatform_backend.settings import load


def _socket_option(conn: Any, level: int, option: int) -> int:
    dbapi = conn.connection.dbapi_connection
    with socket.socket(fileno=dbapi.fileno()) as sock:
        try:
            return sock.getsockopt(level, option)
        finally:
            sock.detach()  # the descriptor stays psycopg's


def test_postgres_urls_get_keepalives_and_a_user_timeout_unless_they_set_their_own() -> None:
    url = db.with_timeouts("postgresql+psycopg://u@h/d?keepalives_idle=99&tcp_user_timeout=0", 30)
    assert dict(make_url(url).query) == {
        "connect_timeout": "10",
        "keepalives": "1",
        "keepalives_idle": "99",
        "keepalives_interval": "5",
        "keepalives_count": "3",
        "tcp_user_timeout": "0",
    }
    assert dict(make_url(db.with_timeouts("postgresql+psycopg://u@h/d", 0)).query) == {"connect_timeout": "10"}
    assert db.with_timeouts("sqlite:///x.db", 30) == "sqlite:///x.db"
    settings = load(env={"DATABASE_URL": "postgresql://u@h/d", "TP_DATABASE_TIMEOUT_S": "6"})
    assert settings.database_timeout_s == 6
    assert make_url(settings.effective_database_url).query["tcp_user_timeout"] == "6000"
    assert load(env={}).database_timeout_s == db.DEFAULT_DATABASE_TIMEOUT_S


def test_the_socket_has_the_keepalives_and_the_server_the_statement_timeout() -> None:
    with postgres_database() as url:
        engine = db.create_db_engine(db.with_timeouts(url, 12), timeout_s=12)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "12s"
                assert _socket_option(conn, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert _socket_option(conn, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
                assert _socket_option(conn, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
                assert _socket_option(conn, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12000
        finally:
            engine.dispose()


def test_options_in_the_url_are_kept_and_their_statement_timeout_wins() -> None:
    with postgres_database() as url:
        own = db.create_db_engine(f"{url}?options=-c%20statement_timeout%3D0", timeout_s=12)
        other = db.create_db_engine(f"{url}?options=-c%20work_mem%3D8MB", timeout_s=12)
        try:
            with own.connect() as conn:
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
            with other.connect() as conn:
                assert conn.execute(text("SHOW work_mem")).scalar() == "8MB"
                assert conn.execute(text("SHOW statement_timeout")).scalar() == "12s"
        finally:
            own.dispose()
            other.dispose()


def test_a_statement_longer_than_the_timeout_is_cancelled_by_the_server_and_the_connection_kept() -> None:
    with postgres_database() as url:
        engine = db.create_db_engine(url, timeout_s=1)
        try:
            with engine.connect() as conn:
                with pytest.raises(OperationalError) as cancelled:
                    conn.execute(text("SELECT pg_sleep(5)"))
                assert getattr(cancelled.value.orig, "sqlstate", None) == "57014"  # query_canceled
                assert not isinstance(cancelled.value, db.DatabaseNotAnswering)
                assert status_of(cancelled.value)[0] == grpc.StatusCode.UNAVAILABLE
                conn.rollback()
                assert conn.execute(text("SELECT 2")).scalar() == 2  # not closed: the server answered
        finally:
            engine.dispose()


def test_a_connection_idle_in_its_transaction_longer_than_the_timeout_is_left_alone() -> None:
    with postgres_database() as url:
        engine = db.create_db_engine(url, timeout_s=1)
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
                time.sleep(3)  # past the bound (1.1 s) and a few watchdog rounds, waiting on nothing
                assert conn.execute(text("SELECT 2")).scalar() == 2
                conn.commit()
                time.sleep(3)
                assert conn.execute(text("SELECT 3")).scalar() == 3
        finally:
            engine.dispose()
