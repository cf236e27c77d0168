"""Exactly-once ingest of telemetry batches: validate, insert, advance the cursor, all in one transaction.

The primary key (job, sequence) of the metrics and logs tables is what guarantees each point is stored once:
rows are inserted with ON CONFLICT DO NOTHING, so a resent point is counted as a duplicate and ignored. The
job's cursor (highest committed sequence) advances in the same transaction, so a client that asks for it after
a broken stream resumes exactly where the commits stopped.

This is the backend's hot path (hundreds of thousands of points per second), so it bypasses the ORM:
SQLite gets one `executemany`, PostgreSQL one `INSERT ... SELECT FROM unnest(arrays)` per batch.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainingplatform.telemetry.v1 import telemetry_pb2

from trainingplatform_backend import limits
from trainingplatform_backend.errors import InvalidArgument
from trainingplatform_backend.models import LOGS_STREAM, METRICS_STREAM
from trainingplatform_backend.store import Store, utcnow

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_LEVEL = max(v.number for v in telemetry_pb2.LogRecord.DESCRIPTOR.fields_by_name["level"].enum_type.values)


@dataclass(frozen=True)
class BatchResult:
    """What one batch did."""

    committed: int
    duplicates: int
    missing: int
    last_sequence: int
    first_sequence: int
    max_sequence: int


def _check_common(
    sequences: Sequence[int],
    steps: Sequence[int | None],
    epochs: Sequence[int | None],
    wall_times: Sequence[float],
    what: str,
) -> None:
    if min(sequences) < 1:
        raise InvalidArgument(f"{what} sequence numbers start at 1; got {min(sequences)}")
    if any(s is not None and s < 0 for s in steps):
        raise InvalidArgument(f"{what} step must be >= 0")
    if any(e is not None and e < 0 for e in epochs):
        raise InvalidArgument(f"{what} epoch must be >= 0")
    if not all(map(math.isfinite, wall_times)):
        raise InvalidArgument(f"{what} wall_time must be a finite number of seconds since the Unix epoch")


def check_metric_key(key: str) -> None:
    """Raises InvalidArgument unless `key` is 1 to 250 characters without control characters."""
    if not key:
        raise InvalidArgument("metric key must not be empty")
    if len(key) > limits.MAX_KEY_CHARS:
        raise InvalidArgument(
            f"metric key {key[:40]!r}... is {len(key)} characters; the limit is {limits.MAX_KEY_CHARS}"
        )
    if _CONTROL.search(key):
        raise InvalidArgument(f"metric key {key!r} contains control characters")


_METRIC_COLUMNS = ("sequence", "key", "value", "step", "epoch", "wall_time")
_METRIC_TYPES = ("int8", "text", "float8", "int8", "int8", "float8")
_LOG_COLUMNS = ("sequence", "level", "message", "epoch", "step", "wall_time", "source", "rank")
_LOG_TYPES = ("int8", "int2", "text", "int8", "int8", "float8", "text", "int4")


class _Table:
    """The statements that write one telemetry table on one database."""

    def __init__(self, table: str, columns: tuple[str, ...], pg_types: tuple[str, ...], sqlite: bool) -> None:
        names = ", ".join(("job_pk", *columns))
        self.pg_types = ("int8", *pg_types)
        if sqlite:
            self.insert = (
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * (len(columns) + 1))}) ON CONFLICT DO NOTHING"
            )
        else:
            arrays = ", ".join(f"%s::{t}[]" for t in pg_types)
            self.insert = f"INSERT INTO {table} ({names}) SELECT %s, * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
        self.copy = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"


class Ingestor:
    """Commits metric and log batches for the telemetry service."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine
        sqlite = store.is_sqlite
        self._tables = {
            METRICS_STREAM: _Table("metrics", _METRIC_COLUMNS, _METRIC_TYPES, sqlite),
            LOGS_STREAM: _Table("logs", _LOG_COLUMNS, _LOG_TYPES, sqlite),
        }
        param = "?" if sqlite else "%s"
        lock = "" if sqlite else " FOR UPDATE"
        self._read_cursor = (
            f"SELECT last_sequence FROM ingest_cursors WHERE job_pk = {param} AND stream = {param}{lock}"
        )
        self._advance_cursor = (
            f"UPDATE ingest_cursors SET last_sequence = {param}, committed_count = committed_count + {param}, "
            f"duplicate_count = duplicate_count + {param}, missing_count = missing_count + {param}, "
            f"updated_at = {param} WHERE job_pk = {param} AND stream = {param}"
        )

    def commit_metrics(self, job_pk: int, points: Sequence[telemetry_pb2.MetricPoint]) -> BatchResult:
        """Validates and commits one batch of metric points (all or nothing).

        Raises:
            InvalidArgument: a point breaks the contract's rules; nothing of the batch is stored.
        """
        # One pass over the messages (the costly part), then columns for the checks. SQLite stores a bound NaN
        # as NULL by itself and NULL is read back as NaN; PostgreSQL stores NaN.
        rows = [
            (
                job_pk,
                p.sequence,
                p.key,
                p.value,
                p.step if p.HasField("step") else None,
                p.epoch if p.HasField("epoch") else None,
                p.wall_time,
            )
            for p in points
        ]
        _, sequences, keys, _, steps, epochs, wall_times = zip(*rows, strict=True)
        _check_common(sequences, steps, epochs, wall_times, "metric")
        for key in set(keys):
            check_metric_key(key)
        return self._commit(job_pk, METRICS_STREAM, rows, sequences)

    def commit_logs(self, job_pk: int, records: Sequence[telemetry_pb2.LogRecord]) -> BatchResult:
        """Validates and commits one batch of log records (all or nothing); over-long text is truncated.

        Raises:
            InvalidArgument: a record breaks the contract's rules; nothing of the batch is stored.
        """
        # PostgreSQL text cannot hold NUL; it is replaced rather than refusing the record.
        rows = [
            (
                job_pk,
                r.sequence,
                r.level,
                limits.truncate_utf8(r.message, limits.MAX_LOG_MESSAGE_BYTES).replace("\x00", "\ufffd"),
                r.epoch if r.HasField("epoch") else None,
                r.step if r.HasField("step") else None,
                r.wall_time,
                r.source[: limits.MAX_SOURCE_CHARS].replace("\x00", "\ufffd"),
                r.rank,
            )
            for r in records
        ]
        _, sequences, levels, _, epochs, steps, wall_times, _, _ = zip(*rows, strict=True)
        _check_common(sequences, steps, epochs, wall_times, "log record")
        if min(levels) < 1 or max(levels) > _MAX_LEVEL:
            bad = next(level for level in levels if level < 1 or level > _MAX_LEVEL)
            raise InvalidArgument(f"log level {bad} is not a LogLevel (use LOG_LEVEL_DEBUG .. LOG_LEVEL_CRITICAL)")
        return self._commit(job_pk, LOGS_STREAM, rows, sequences)

    def _commit(self, job_pk: int, stream: str, rows: list[tuple[Any, ...]], sequences: Sequence[int]) -> BatchResult:
        table = self._tables[stream]
        with self._store.write_lock(), self._engine.begin() as conn:
            previous = conn.exec_driver_sql(self._read_cursor, (job_pk, stream)).scalar_one()
            if self._store.is_sqlite:
                committed = conn.exec_driver_sql(table.insert, rows).rowcount
            else:
                committed = self._write_postgres(conn, table, previous, rows, sequences)
            duplicates = len(sequences) - committed
            highest = max(sequences)
            last = max(previous, highest)
            # Sequences skipped above the previous cursor: reported, never refused (the points that arrived are
            # kept; a later batch may still fill the hole, it is stored then but not counted back).
            missing = (last - previous) - len({s for s in sequences if s > previous})
            conn.exec_driver_sql(self._advance_cursor, (last, committed, duplicates, missing, utcnow(), job_pk, stream))
            self._store.notify(conn, job_pk)
        if missing:
            log.warning(
                "job_pk=%d %s stream skipped %d sequence numbers (cursor %d -> %d)",
                job_pk,
                stream,
                missing,
                previous,
                last,
            )
        return BatchResult(committed, duplicates, missing, last, min(sequences), highest)

    @staticmethod
    def _write_postgres(
        conn: Any, table: _Table, previous: int, rows: list[tuple[Any, ...]], sequences: Sequence[int]
    ) -> int:
        """COPYs the rows above the cursor (they cannot exist yet: the cursor row is locked and is the highest
        stored sequence) and inserts the others with ON CONFLICT DO NOTHING. Returns the rows stored."""
        increasing = sequences[0] > previous and all(a < b for a, b in itertools.pairwise(sequences))
        if increasing:
            fresh, older = rows, []
        else:
            first: dict[int, tuple[Any, ...]] = {}
            for row in rows:
                first.setdefault(row[1], row)
            fresh = [row for sequence, row in first.items() if sequence > previous]
            older = [row for sequence, row in first.items() if sequence <= previous]
        stored = 0
        if fresh:
            driver = conn.connection.driver_connection
            with driver.cursor() as cursor, cursor.copy(table.copy) as copy:
                copy.set_types(list(table.pg_types))
                for row in fresh:
                    copy.write_row(row)
            stored += len(fresh)
        if older:
            columns = list(zip(*older, strict=True))
            stored += conn.exec_driver_sql(table.insert, (older[0][0], *(list(c) for c in columns[1:]))).rowcount
        return stored
