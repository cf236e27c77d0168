"""The backend's server interceptor: the platform's (`trainingplatform_sdk.server`) with the backend's tokens, the
rights of each method, and the backend's one mapping of errors to status codes."""

from __future__ import annotations

import logging
import time

import grpc
from sqlalchemy.exc import DBAPIError, OperationalError
from trainingplatform_sdk.server import AuthInterceptor, Status, status_mapping

from trainingplatform_backend import auth, db, metrics

log = logging.getLogger(__name__)

DATABASE_UNAVAILABLE: Status = (grpc.StatusCode.UNAVAILABLE, "the backend's database is unavailable; retry later")
DATABASE_NOT_ANSWERING: Status = (grpc.StatusCode.UNAVAILABLE, "the backend's database is not answering; retry later")

# PostgreSQL SQLSTATE classes of a database that cannot serve now (retrying later can succeed): connection
# exception, transaction rollback (serialization failure, deadlock), insufficient resources (too many connections,
# disk full), operator intervention (shutdown, statement timeout), system error (I/O).
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
# SQLite's primary result codes of the same kind: BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN,
# PROTOCOL, NOTADB. Any other (ERROR: no such table, too many SQL variables; TOOBIG...) is a refused statement.
_OUTAGE_SQLITE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def is_outage(error: DBAPIError) -> bool:
    """Whether a database error means the database cannot serve now (UNAVAILABLE), not that it refused the
    statement (INTERNAL: retrying the same call cannot help; a refused statement is a bug of the backend).

    SQLAlchemy reports both as OperationalError: a connection it found broken (`connection_invalidated`), a
    connection that could not be opened (psycopg's error then carries the failed connection, `pgconn`, or is a
    timeout), or a database error code of the outage kind is an outage; anything else, such as libpq refusing to
    send a statement with more than 65,535 parameters or SQLite's "no such table", is not.
    """
    if error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError):
        return False
    orig = error.orig
    sqlite_code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        return (sqlite_code & 0xFF) in _OUTAGE_SQLITE_CODES
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    # No code: the client library failed on its own. An outage when it failed to connect.
    return getattr(orig, "pgconn", None) is not None or type(orig).__name__ == "ConnectionTimeout"


class RoundFailures:
    """How a background loop (dispatch, leases) logs its failed rounds: an outage of the database as one WARNING when
    it starts and one INFO when a round succeeds again, not a traceback every round (600 in a five-minute outage);
    any other error with its traceback, every time."""

    def __init__(self, what: str, logger: logging.Logger) -> None:
        """`what`: the loop, as the log lines name it ("dispatch round")."""
        self._what = what
        self._log = logger
        self._outage_since: float | None = None

    def failed(self, error: BaseException) -> None:
        """Logs a failed round."""
        if isinstance(error, DBAPIError) and is_outage(error):
            if self._outage_since is None:
                self._outage_since = time.monotonic()
                self._log.warning(
                    "%s failed: the database is unavailable (%s); retrying until it is back",
                    self._what,
                    type(error.orig).__name__,
                )
            return
        self._log.error("%s failed", self._what, exc_info=error)

    def succeeded(self) -> None:
        """Notes a round that reached the database: logs the end of an outage."""
        if self._outage_since is not None:
            self._log.info("%s: the database is back after %.0f s", self._what, time.monotonic() - self._outage_since)
            self._outage_since = None


_platform_status = status_mapping("backend")


def _status(error: BaseException) -> Status:
    if isinstance(error, db.StatementTimedOut):
        return (
            grpc.StatusCode.UNAVAILABLE,
            f"a statement of the backend's database ran past TP_DATABASE_TIMEOUT_S ({error.timeout_s:g} s) and was "
            "cancelled (a lock held on a table, or more load than the database carries now); retry later",
        )
    if isinstance(error, DBAPIError) and is_outage(error):
        if isinstance(error, db.DatabaseNotAnswering) or type(error.orig).__name__ == "ConnectionTimeout":
            return DATABASE_NOT_ANSWERING
        return DATABASE_UNAVAILABLE
    return _platform_status(error)


status_of = metrics.counting_refusals(_status)
"""PlatformError keeps its code and message, a database that cannot be reached or serve now is UNAVAILABLE
(`is_outage`; "not answering" when it did not answer within TP_DATABASE_TIMEOUT_S or libpq's connect_timeout),
anything else (a statement the database refuses included) is INTERNAL, logged once with its traceback by the
handler's wrapper; each status given is counted (`tp_backend_refused_calls`)."""


class ServiceInterceptor(AuthInterceptor[auth.Principal]):
    """Authenticates the caller from its bearer token, checks its right to the method, runs the handler with the
    caller in `auth.CALLER`, and turns exceptions raised by the handlers into gRPC statuses (`status_of`)."""

    def __init__(self, authenticator: auth.Authenticator) -> None:
        super().__init__(status_of=status_of, log=log, caller=auth.CALLER)
        self._authenticator = authenticator

    async def authenticate(self, method: str, token: str) -> auth.Principal:
        """The caller presenting `token`, when it may call `method`.

        Raises:
            UnauthenticatedError: a token the backend does not know.
            PermissionDeniedError: the token's kind has no right to `method`.
        """
        principal = await self._authenticator.authenticate(token)
        auth.check_method(method, principal)
        return principal
