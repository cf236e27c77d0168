"""Exactly-once ingest of telemetry batches: validate, insert, advance the cursor, all in one transaction.

The primary key (job, sequence) of the metrics and logs tables is what guarantees each point is stored once:
rows are inserted with ON CONFLICT DO NOTHING, so a resent point is counted as a duplicate and ignored. The
job's cursor (highest committed sequence) advances in the same transaction, so a client that asks for it after
a broken stream resumes exactly where the commits stopped.

This is the backend's hot path (hundreds of thousands of points per second, or a message per training step from
each trainer), so it bypasses the ORM: the new rows of a group-commit round (above the locked cursors) go in one
multi-row `INSERT` per SQLITE_ROWS_PER_STATEMENT rows on SQLite (on a connection of the ingestor's own), one binary
COPY per table on PostgreSQL; resent rows through `INSERT ... ON CONFLICT DO NOTHING`, counted.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import operator
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import InvalidArgumentError, quote
from trainingplatform_sdk.spec import limits

from trainingplatform_backend import metrics
from trainingplatform_backend.models import LOGS_STREAM, METRICS_STREAM
from trainingplatform_backend.store import Store, utcnow

log = logging.getLogger(__name__)

# Batches and group-commit rounds of up to this many rows are validated and (SQLite) committed on the event loop:
# that takes microseconds, a hop to a worker thread and back costs more. Larger ones go to a worker thread.
INLINE_ROWS = 256

# Rows per SQLite INSERT statement: one statement of many VALUES tuples costs about 40 % less CPU per row than an
# executemany of one-row statements (1.0 against 1.7 microseconds per metric row measured here; little changes past 64
# rows), and 64 rows of 9 columns stay under the 999 bound parameters of SQLite before 3.32.
SQLITE_ROWS_PER_STATEMENT = 64

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_LEVEL = max(common_pb2.LogLevel.values())


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
    # Whole columns at a time (min and max in C), filtering the unset values only when there are any.
    if min(sequences) < 1:
        raise InvalidArgumentError(f"{what} sequence numbers start at 1; got {min(sequences)}")
    if max(sequences) > limits.MAX_SEQUENCE:
        raise InvalidArgumentError(
            f"{what} sequence must be at most {limits.MAX_SEQUENCE} (MAX_SEQUENCE); got {max(sequences)}"
        )
    present_steps: Sequence[int] = [s for s in steps if s is not None] if None in steps else steps  # type: ignore[assignment]
    if present_steps and min(present_steps) < 0:
        raise InvalidArgumentError(f"{what} step must be >= 0")
    if present_steps and max(present_steps) > limits.MAX_STEP:
        raise InvalidArgumentError(
            f"{what} step must be at most {limits.MAX_STEP} (MAX_STEP); got {max(present_steps)}"
        )
    present_epochs: Sequence[int] = [e for e in epochs if e is not None] if None in epochs else epochs  # type: ignore[assignment]
    if present_epochs and min(present_epochs) < 0:
        raise InvalidArgumentError(f"{what} epoch must be >= 0")
    if present_epochs and max(present_epochs) > limits.MAX_EPOCH:
        raise InvalidArgumentError(
            f"{what} epoch must be at most {limits.MAX_EPOCH} (MAX_EPOCH); got {max(present_epochs)}"
        )
    if (
        not all(map(math.isfinite, wall_times))
        or min(wall_times) < limits.MIN_TIMESTAMP_SECONDS
        or max(wall_times) > limits.MAX_TIMESTAMP_SECONDS
    ):
        raise InvalidArgumentError(
            f"{what} wall_time must be seconds since the Unix epoch from 0001-01-01 to 9999-12-31 "
            f"({limits.MIN_TIMESTAMP_SECONDS} to {limits.MAX_TIMESTAMP_SECONDS}); got {_worst(wall_times)}"
        )


def _worst(wall_times: Sequence[float]) -> float:
    """The first wall time out of range (for the error message)."""
    low, high = limits.MIN_TIMESTAMP_SECONDS, limits.MAX_TIMESTAMP_SECONDS
    return next(t for t in wall_times if not low <= t <= high)


def _one_in_range(sequence: int, step: int | None, epoch: int | None, wall_time: float) -> bool:
    """`_check_common` of a single point in a few comparisons: True when it passes; when not, `_check_common` says
    why."""
    return (
        1 <= sequence <= limits.MAX_SEQUENCE
        and (step is None or 0 <= step <= limits.MAX_STEP)
        and (epoch is None or 0 <= epoch <= limits.MAX_EPOCH)
        and limits.MIN_TIMESTAMP_SECONDS <= wall_time <= limits.MAX_TIMESTAMP_SECONDS  # False for NaN as well
    )


def check_metric_key(key: str, field: str = "key") -> None:
    """Raises InvalidArgumentError (naming `field`) unless `key` is 1 to 250 characters without control
    characters."""
    if key in _VALID_KEYS:
        return
    if not key:
        raise InvalidArgumentError(f"{field}: a metric key must not be empty")
    if len(key) > limits.MAX_KEY_CHARS:
        raise InvalidArgumentError(
            f"{field}: metric key {quote(key, 40)} is {len(key)} characters; the limit is {limits.MAX_KEY_CHARS}"
        )
    if _CONTROL.search(key):
        raise InvalidArgumentError(f"{field}: metric key {quote(key)} contains control characters")
    if len(_VALID_KEYS) >= _VALID_KEYS_KEPT:
        _VALID_KEYS.clear()
    _VALID_KEYS.add(key)


# Keys already found valid: a run logs the same few keys in every message, so each is checked once.
_VALID_KEYS: set[str] = set()
_VALID_KEYS_KEPT = 10_000


_METRIC_COLUMNS = ("sequence", "key", "value", "step", "epoch", "wall_time")
_METRIC_TYPES = ("int8", "text", "float8", "int8", "int8", "float8")
_LOG_COLUMNS = ("sequence", "level", "message", "epoch", "step", "wall_time", "source", "rank")
_LOG_TYPES = ("int8", "int2", "text", "int8", "int8", "float8", "text", "int4")


class _Table:
    """The statements that write one telemetry table on one database."""

    def __init__(self, table: str, columns: tuple[str, ...], pg_types: tuple[str, ...], sqlite: bool) -> None:
        names = ", ".join(("job_pk", *columns))
        self.width = len(columns) + 1
        """Values per row."""
        self.pg_types = ("int8", *pg_types)
        self.sqlite_inserts: dict[int, str] = {}
        """SQLite: the INSERT of 1, 2, 4 ... SQLITE_ROWS_PER_STATEMENT rows; any count is a few of them, each
        prepared once and kept in sqlite3's statement cache."""
        self.insert = ""
        """PostgreSQL: the INSERT of rows passed as one array per column (resent rows, counted)."""
        if sqlite:
            row = f"({', '.join('?' * self.width)})"
            self.sqlite_inserts = {
                size: f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * size)} ON CONFLICT DO NOTHING"
                for size in (1 << bit for bit in range(SQLITE_ROWS_PER_STATEMENT.bit_length()))
            }
        else:
            arrays = ", ".join(f"%s::{t}[]" for t in pg_types)
            self.insert = f"INSERT INTO {table} ({names}) SELECT %s, * FROM unnest({arrays}) ON CONFLICT DO NOTHING"
        self.copy = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"


# The fields of MetricColumns with an entry per point; the optional ones may instead be empty (none for every point).
_PER_POINT_COLUMNS = ("key_indexes", "values", "steps", "epochs", "wall_times", "sequences")
_OPTIONAL_COLUMNS = ("steps", "epochs")


@dataclass(frozen=True)
class MetricColumns:
    """The `columns` of a StreamMetricsRequest with its number of points (the longest column: a shorter one is
    refused by `Ingestor.prepare_metrics`)."""

    message: telemetry_pb2.MetricColumns
    count: int

    @classmethod
    def of(cls, message: telemetry_pb2.MetricColumns) -> MetricColumns:
        """`message` with its point count."""
        return cls(message, max(len(getattr(message, name)) for name in _PER_POINT_COLUMNS))

    def __len__(self) -> int:
        return self.count

    def points(self) -> list[telemetry_pb2.MetricPoint]:
        """The points as MetricPoint messages (what subscribers get), once `prepare_metrics` accepted them."""
        columns = self.message
        keys = columns.keys
        steps = columns.steps or [-1] * self.count
        epochs = columns.epochs or [-1] * self.count
        point = telemetry_pb2.MetricPoint
        return [
            point(
                key=keys[index],
                value=value,
                step=step if step >= 0 else None,
                epoch=epoch if epoch >= 0 else None,
                wall_time=wall_time,
                sequence=sequence,
            )
            for index, value, step, epoch, wall_time, sequence in zip(
                columns.key_indexes, columns.values, steps, epochs, columns.wall_times, columns.sequences, strict=True
            )
        ]


def _optional_column(column: Sequence[int], count: int, what: str) -> Sequence[int | None]:
    """A column of steps or epochs with -1 meaning none, as values or None; empty means none for every point."""
    if not column:
        return [None] * count
    lowest = min(column)
    if lowest >= 0:
        return column
    if lowest < -1:
        raise InvalidArgumentError(f"metric {what} must be >= 0, or -1 in columns for none; got {lowest}")
    return [None if value < 0 else value for value in column]


class Prepared:
    """A validated batch of one stream, ready to insert: its rows, or its columns (a batch that came as
    MetricColumns), from which the rows are made only where they are needed."""

    __slots__ = ("_rows", "columns", "job_pk", "sequences", "stream")

    def __init__(
        self,
        job_pk: int,
        stream: str,
        rows: list[tuple[Any, ...]] | None,
        sequences: Sequence[int],
        columns: tuple[Sequence[Any], ...] | None = None,
    ) -> None:
        """`rows` or `columns` (every column of the table, job_pk first, one entry per point); `sequences` in
        the batch's order."""
        self.job_pk = job_pk
        self.stream = stream
        self.sequences = sequences
        self.columns = columns
        self._rows = rows

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The rows, in the batch's order."""
        if self._rows is None:
            assert self.columns is not None
            self._rows = list(zip(*self.columns, strict=True))
        return self._rows

    def each_row(self) -> Iterable[tuple[Any, ...]]:
        """The rows, in the batch's order; made one at a time from the columns when the batch has them and its rows
        were not made yet (all at once, a large batch's row tuples take several times the memory of its columns)."""
        if self._rows is not None:
            return self._rows
        assert self.columns is not None
        return zip(*self.columns, strict=True)

    def flat(self) -> list[Any]:
        """Every row's values one after the other (what a multi-row INSERT binds), made from the columns without
        a tuple per row when the batch has them."""
        if self.columns is None or self._rows is not None:
            return list(itertools.chain.from_iterable(self.rows))
        width = len(self.columns)
        flat: list[Any] = [None] * (width * len(self.sequences))
        for index, column in enumerate(self.columns):
            flat[index::width] = column
        return flat


class Ingestor:
    """Validates telemetry batches and commits them, several streams' batches per transaction."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._engine = store.engine
        sqlite = store.is_sqlite
        self._tables = {
            METRICS_STREAM: _Table("metrics", _METRIC_COLUMNS, _METRIC_TYPES, sqlite),
            LOGS_STREAM: _Table("logs", _LOG_COLUMNS, _LOG_TYPES, sqlite),
        }
        param = "?" if sqlite else "%s"
        self._advance_cursor = (
            f"UPDATE ingest_cursors SET last_sequence = {param}, committed_count = committed_count + {param}, "
            f"duplicate_count = duplicate_count + {param}, missing_count = missing_count + {param}, "
            f"updated_at = {param} WHERE job_pk = {param} AND stream = {param}"
        )
        # SQLite: the one DBAPI connection every round uses (opened on the first; see `_commit_sqlite`).
        self._sqlite: Any = None

    def close(self) -> None:
        """Closes the connection the SQLite rounds use (a later round opens another)."""
        with self._store.write_lock():
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None

    def prepare_metrics(self, job_pk: int, points: Sequence[telemetry_pb2.MetricPoint] | MetricColumns) -> Prepared:
        """Validates one batch of metric points, as messages or as columns, and turns it into rows.

        Raises:
            InvalidArgumentError: a point breaks the contract's rules; the batch must be refused whole.
        """
        if isinstance(points, MetricColumns):
            return self._prepare_metric_columns(job_pk, points)
        # One pass over the messages (the costly part), then the checks on columns. HasField costs as much as the
        # rest of a point, so it is asked only when the value reads 0 (an unset optional field also reads 0).
        # SQLite stores a bound NaN as NULL by itself and NULL is read back as NaN; PostgreSQL stores NaN.
        rows = [
            (
                job_pk,
                p.sequence,
                p.key,
                p.value,
                p.step or (0 if p.HasField("step") else None),
                p.epoch or (0 if p.HasField("epoch") else None),
                p.wall_time,
            )
            for p in points
        ]
        if len(rows) == 1:  # the usual message: a few comparisons, no columns
            _, sequence, key, _, step, epoch, wall_time = rows[0]
            if _one_in_range(sequence, step, epoch, wall_time) and key in _VALID_KEYS:
                return Prepared(job_pk, METRICS_STREAM, rows, (sequence,))
        _, sequences, keys, _, steps, epochs, wall_times = _transpose(rows, self._tables[METRICS_STREAM].width)
        _check_common(sequences, steps, epochs, wall_times, "metric")
        for key in set(keys):
            check_metric_key(key)
        return Prepared(job_pk, METRICS_STREAM, rows, sequences)

    def _prepare_metric_columns(self, job_pk: int, batch: MetricColumns) -> Prepared:
        # Whole columns at a time: the packed arrays come out of the message as lists in C.
        columns, count = batch.message, batch.count
        for name in _PER_POINT_COLUMNS:
            length = len(getattr(columns, name))
            if length != count and not (length == 0 and name in _OPTIONAL_COLUMNS):
                raise InvalidArgumentError(
                    f"metric columns: {name} has {length} entries and another column {count}; every column holds "
                    "one entry per point (steps and epochs may instead be empty)"
                )
        keys = list(columns.keys)
        for key in keys:
            check_metric_key(key, "columns.keys")
        key_indexes = columns.key_indexes
        if max(key_indexes) >= len(keys):
            raise InvalidArgumentError(
                f"metric columns: key index {max(key_indexes)} is past the {len(keys)} key(s) of the message"
            )
        sequences = list(columns.sequences)
        steps = _optional_column(columns.steps, count, "step")
        epochs = _optional_column(columns.epochs, count, "epoch")
        wall_times = columns.wall_times
        _check_common(sequences, steps, epochs, wall_times, "metric")
        # The table's columns, in _METRIC_COLUMNS order after job_pk.
        table_columns = (
            [job_pk] * count,
            sequences,
            [keys[index] for index in key_indexes],
            columns.values,
            steps,
            epochs,
            wall_times,
        )
        return Prepared(job_pk, METRICS_STREAM, None, sequences, table_columns)

    def prepare_logs(self, job_pk: int, records: Sequence[telemetry_pb2.LogRecord]) -> Prepared:
        """Validates one batch of log records and turns it into rows; over-long text is truncated.

        Raises:
            InvalidArgumentError: a record breaks the contract's rules; the batch must be refused whole.
        """
        # PostgreSQL text cannot hold NUL; it is replaced rather than refusing the record.
        rows = [
            (
                job_pk,
                r.sequence,
                r.level,
                limits.truncate_utf8(r.message, limits.MAX_LOG_MESSAGE_BYTES).replace("\x00", "\ufffd"),
                r.epoch or (0 if r.HasField("epoch") else None),
                r.step or (0 if r.HasField("step") else None),
                r.wall_time,
                r.source[: limits.MAX_SOURCE_CHARS].replace("\x00", "\ufffd"),
                r.rank,
            )
            for r in records
        ]
        _, sequences, levels, _, epochs, steps, wall_times, _, ranks = _transpose(rows, self._tables[LOGS_STREAM].width)
        _check_common(sequences, steps, epochs, wall_times, "log record")
        if min(ranks) < 0:
            raise InvalidArgumentError(f"log record rank must be >= 0; got {min(ranks)}")
        if min(levels) < 1 or max(levels) > _MAX_LEVEL:
            bad = next(level for level in levels if level < 1 or level > _MAX_LEVEL)
            raise InvalidArgumentError(f"log level {bad} is not a LogLevel (use LOG_LEVEL_DEBUG .. LOG_LEVEL_CRITICAL)")
        return Prepared(job_pk, LOGS_STREAM, rows, sequences)

    def commit(self, batches: Sequence[Prepared]) -> list[BatchResult]:
        """Commits the batches of any streams in ONE transaction, with every affected cursor: a round of the
        group commit. Each batch is all or nothing with the others; results come in the order given."""
        with self._store.write_lock():
            return self._commit_locked(batches)

    def commit_without_waiting(self, batches: Sequence[Prepared]) -> list[BatchResult] | None:
        """Commits like `commit` on SQLite when its write lock is free right now; None (nothing done) otherwise.

        Meant for the event loop: a small SQLite transaction takes about 0.1 ms (a WAL checkpoint, once per ~4 MB of
        WAL, a few ms), less than handing it to a worker thread and back; it never waits for another writer thread.
        PostgreSQL always answers None: its commits wait on the network.
        """
        if not self._store.is_sqlite or not self._store.try_write_lock():
            return None
        try:
            return self._commit_locked(batches)
        finally:
            self._store.release_write_lock()

    def _commit_locked(self, batches: Sequence[Prepared]) -> list[BatchResult]:
        if not self._store.is_sqlite:
            with self._engine.begin() as conn:
                return self._write_round(conn, batches)
        return self._commit_sqlite(batches)

    def _commit_sqlite(self, batches: Sequence[Prepared]) -> list[BatchResult]:
        # One DBAPI connection of the ingestor's own, kept open and taken out of SQLAlchemy's pool: a checkout, reset
        # and checkin of the pool cost more Python than a one-point round's transaction, and a file database has no
        # dropped connections for the pool to handle. Only used under the store's write lock: one thread at a time.
        # Explicit BEGIN IMMEDIATE: the cursors are read inside the write transaction, one lock and snapshot per round.
        raw = self._sqlite
        if raw is None:
            fairy = self._engine.raw_connection()  # the engine's connect events (pragmas) run on it
            raw = fairy.driver_connection
            assert raw is not None
            fairy.detach()
            raw.isolation_level = None  # transactions begin and end only where this method says
            self._sqlite = raw
        cursor = raw.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            results = self._write_round(_SqliteConnection(cursor), batches)
            cursor.execute("COMMIT")
            return results
        except BaseException:
            try:
                raw.rollback()
            except Exception:  # the connection is unusable: the next round opens another
                self._sqlite = None
                raw.close()
            raise

    def _write_round(self, conn: Any, batches: Sequence[Prepared]) -> list[BatchResult]:
        """The statements of one round, inside the caller's transaction."""
        keys = sorted({(b.job_pk, b.stream) for b in batches})
        cursors = self._lock_cursors(conn, keys)
        running = dict(cursors)
        plans = []
        for batch in batches:
            previous = running[(batch.job_pk, batch.stream)]
            fresh, older = _split(batch, previous)
            highest = max(batch.sequences)
            last = max(previous, highest)
            # Sequences skipped above the previous cursor: reported, never refused (a later batch may still
            # fill the hole: it is stored then, not counted back).
            above = len(batch) if fresh is None else len({s for s in batch.sequences if s > previous})
            missing = (last - previous) - above
            running[(batch.job_pk, batch.stream)] = last
            plans.append((batch, fresh, older, previous, last, missing))
        stored = self._insert(conn, plans)
        results = []
        totals: dict[tuple[int, str], list[int]] = {key: [0, 0, 0] for key in keys}
        for (batch, _, _, previous, last, missing), committed in zip(plans, stored, strict=True):
            duplicates = len(batch.sequences) - committed
            total = totals[(batch.job_pk, batch.stream)]
            total[0] += committed
            total[1] += duplicates
            total[2] += missing
            results.append(
                BatchResult(committed, duplicates, missing, last, min(batch.sequences), max(batch.sequences))
            )
            if missing:
                log.warning(
                    "job_pk=%d %s stream skipped %d sequence numbers (cursor %d -> %d)",
                    batch.job_pk,
                    batch.stream,
                    missing,
                    previous,
                    last,
                )
        now = utcnow()
        conn.exec_driver_sql(
            self._advance_cursor,
            [(running[key], *totals[key], now, *key) for key in keys],
        )
        self._store.notify(conn, {key[0] for key in keys})
        return results

    def _lock_cursors(self, conn: Any, keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """The cursors of the batches' streams, locked (PostgreSQL, in key order so concurrent replicas cannot
        deadlock; SQLite holds the process's write lock)."""
        cursors: dict[tuple[int, str], int] = {}
        job_pks = sorted({k[0] for k in keys})
        if self._store.is_sqlite:
            marks = ", ".join("?" * len(job_pks))
            query = f"SELECT job_pk, stream, last_sequence FROM ingest_cursors WHERE job_pk IN ({marks})"
            params: Any = tuple(job_pks)
        else:
            query = (
                "SELECT job_pk, stream, last_sequence FROM ingest_cursors WHERE job_pk = ANY(%s) "
                "ORDER BY job_pk, stream FOR UPDATE"
            )
            params = (job_pks,)
        for job_pk, stream, last in conn.exec_driver_sql(query, params):
            cursors[(job_pk, stream)] = last
        return {key: cursors[key] for key in keys}

    def _insert(
        self,
        conn: Any,
        plans: list[tuple[Prepared, list[tuple[Any, ...]] | None, list[tuple[Any, ...]], int, int, int]],
    ) -> list[int]:
        """Inserts every plan's rows; returns the rows stored per plan."""
        stored = [len(batch) if fresh is None else len(fresh) for batch, fresh, _, _, _, _ in plans]
        # Rows above the locked cursor cannot exist yet (the cursor moves with the rows): they go in one statement per
        # table for the whole round, a binary COPY on PostgreSQL, multi-row INSERTs on SQLite.
        for stream, table in self._tables.items():
            if self._store.is_sqlite:
                flat: list[Any] = []
                for batch, fresh, *_ in plans:
                    if batch.stream == stream:
                        flat += batch.flat() if fresh is None else itertools.chain.from_iterable(fresh)
                if flat:
                    _sqlite_insert(conn, table, flat)
                continue
            # Each batch's rows one at a time (`Prepared.each_row`): a list of a large round's rows would hold them all.
            parts = [
                batch.each_row() if fresh is None else fresh
                for batch, fresh, *_ in plans
                if batch.stream == stream and (fresh is None or fresh)
            ]
            if not parts:
                continue
            with conn.connection.driver_connection.cursor() as cursor, cursor.copy(table.copy) as copy:
                copy.set_types(list(table.pg_types))
                for row in itertools.chain.from_iterable(parts):
                    copy.write_row(row)
        if self._store.is_sqlite:
            # No network here: statements per batch keep each batch's exact count of stored rows.
            for index, (batch, _, older, *_) in enumerate(plans):
                if older:
                    stored[index] += _sqlite_insert(
                        conn, self._tables[batch.stream], list(itertools.chain.from_iterable(older))
                    )
            return stored
        # Rows at or below the cursor (resends, holes being filled) may exist: ON CONFLICT DO NOTHING, counted.
        for index, (batch, _, older, *_) in enumerate(plans):
            if older:
                columns = _transpose(older, self._tables[batch.stream].width)
                params = (batch.job_pk, *(list(c) for c in columns[1:]))
                stored[index] += conn.exec_driver_sql(self._tables[batch.stream].insert, params).rowcount
        return stored


def _transpose(rows: Sequence[tuple[Any, ...]], width: int) -> list[tuple[Any, ...]]:
    """The columns of `rows` (each `width` long). Not `zip(*rows)`: that makes an iterator object per row, which the
    garbage collector finds alive mid-transpose and promotes, and so triggers full collections (measured: 0.58
    microseconds a point of GC in the backend, ingesting 5,000-point messages)."""
    return [tuple(map(operator.itemgetter(index), rows)) for index in range(width)]


def _split(batch: Prepared, previous: int) -> tuple[list[tuple[Any, ...]] | None, list[tuple[Any, ...]]]:
    """The batch's rows above `previous` (first occurrence of each sequence) and the others; None for the first
    when every row is above `previous`, in increasing order (the usual batch: its rows need not be made)."""
    sequences = batch.sequences
    if sequences[0] > previous and all(a < b for a, b in itertools.pairwise(sequences)):
        return None, []
    first: dict[int, tuple[Any, ...]] = {}
    for row in batch.rows:
        first.setdefault(row[1], row)
    fresh = [row for sequence, row in first.items() if sequence > previous]
    older = [row for sequence, row in first.items() if sequence <= previous]
    return fresh, older


def _sqlite_insert(conn: _SqliteConnection, table: _Table, flat: list[Any]) -> int:
    """Inserts rows, given as their values one after the other, into `table` on SQLite: SQLITE_ROWS_PER_STATEMENT
    rows per statement and the rest in power-of-two statements; returns how many were stored (the others' keys
    existed)."""
    stored = 0
    width = table.width
    rows = len(flat) // width
    start = 0
    statements = table.sqlite_inserts
    while start < rows:
        size = min(SQLITE_ROWS_PER_STATEMENT, 1 << ((rows - start).bit_length() - 1))
        stored += conn.execute(statements[size], flat[start * width : (start + size) * width]).rowcount
        start += size
    return stored


class _SqliteConnection:
    """The one method of SQLAlchemy's Connection that a round uses, over a DBAPI cursor of sqlite3, and `execute`."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def exec_driver_sql(self, statement: str, parameters: Any = ()) -> Any:
        """As SQLAlchemy's: a list of parameter tuples runs the statement once for each."""
        if isinstance(parameters, list):
            return self._cursor.executemany(statement, parameters)
        return self._cursor.execute(statement, parameters)

    def execute(self, statement: str, parameters: Sequence[Any]) -> Any:
        """Runs the statement once with `parameters`, a list included."""
        return self._cursor.execute(statement, parameters)


# Jobs whose last queued batch the committer remembers before it drops those already committed.
_MAX_TRACKED_JOBS = 10_000


class GroupCommitter:
    """Gathers the batches every open stream submits and commits them together, one transaction per round.

    With a hundred trainers each sending a small batch every 50 ms, a transaction per batch would spend the
    backend's time on commits; a round takes whatever arrived while the previous one committed. Each stream
    still waits for its own batch's commit before it acknowledges anything.

    A round of at most `inline_round_rows` rows on SQLite is committed on the event loop when no other writer holds
    the database (`Ingestor.commit_without_waiting`); any other round goes to a worker thread. A trainer that logs a
    few points per flush interval then costs no thread hand-offs, which on a machine shared with training cost
    more CPU than the commit itself.

    With `linger_s`, a round of small batches waits that long after its first batch for more (a trainer sending a
    message every few milliseconds then costs one transaction per `linger_s`, not one per message), unless
    `inline_round_rows` rows are queued or `flush` is asked (a cursor read, a status change, the end of a stream,
    the shutdown): nothing is acknowledged before it is committed, so this only delays what the cursor and the
    subscribers see, by at most `linger_s`.
    """

    def __init__(
        self,
        ingestor: Ingestor,
        *,
        max_round_rows: int = 100_000,
        inline_round_rows: int = INLINE_ROWS,
        linger_s: float = 0.0,
    ) -> None:
        self._ingestor = ingestor
        self._max_round_rows = max_round_rows
        self._inline_round_rows = inline_round_rows
        self.linger_s = linger_s
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queued_rows = 0
        self._flush_scheduled = False
        # The round waiting for its linger to pass, if any.
        self._lingering: asyncio.TimerHandle | None = None
        # The round committing in a worker thread, if any: the next round waits for it.
        self._threaded: asyncio.Task[None] | None = None
        # Per job, the future of the batch it queued last: rounds commit in queue order, so once it is done, every
        # batch the job queued before it is too (`flush(job_pk)`). Done entries are dropped when there are many.
        self._last_queued: dict[int, asyncio.Future[BatchResult]] = {}
        self._prune_at = _MAX_TRACKED_JOBS

    def start(self) -> None:
        """Nothing to start: the first batch queued after a round schedules the next one on the event loop."""

    def enqueue(
        self, batch: Prepared, on_commit: Callable[[BatchResult], None] | None = None, *, linger: bool = True
    ) -> asyncio.Future[BatchResult]:
        """Queues a batch for the next round; the future completes with its commit (or the round's error).

        `on_commit(result)` is called the moment the batch is committed, before the future completes (where a
        stream publishes it to the subscribers: no task or callback is scheduled for that). `linger=False` (a
        batch someone watches live) commits the round without waiting for `linger_s`.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchResult] = loop.create_future()
        self._queue.append((batch, future, on_commit))
        self._queued_rows += len(batch)
        last_queued = self._last_queued
        if len(last_queued) >= self._prune_at and batch.job_pk not in last_queued:
            self._last_queued = last_queued = {job: queued for job, queued in last_queued.items() if not queued.done()}
            self._prune_at = max(_MAX_TRACKED_JOBS, 2 * len(last_queued))  # many jobs queued at once: prune less
        last_queued[batch.job_pk] = future
        if self._threaded is None:
            if linger and self.linger_s > 0 and self._queued_rows < self._inline_round_rows:
                if self._lingering is None and not self._flush_scheduled:
                    self._lingering = loop.call_later(self.linger_s, self._flush)
            else:
                self._flush_soon()
        return future

    def flush_soon(self) -> None:
        """Ends the linger of what is queued: it is committed in the next iteration of the event loop."""
        if self._queue and self._threaded is None:
            self._flush_soon()

    async def flush(self, job_pk: int | None = None) -> None:
        """Commits everything queued so far without lingering, and returns once it is committed (or failed).

        With `job_pk`, only when that job has batches queued or committing, and returns once they are: a cursor
        read of one trainer then does not cut short the linger of every other job's round.
        """
        waiting: set[asyncio.Future[Any]]
        if job_pk is not None:
            last = self._last_queued.get(job_pk)
            waiting = {last} if last is not None and not last.done() else set()
        else:
            waiting = {future for _, future, _ in self._queue}
            if self._threaded is not None:
                waiting.add(self._threaded)
        if waiting:
            self.flush_soon()
            await asyncio.wait(waiting)

    def _flush_soon(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if not self._flush_scheduled:
            # A plain callback, not a task: it runs once the loop has read what every ready stream sent meanwhile,
            # so those batches share the round, and it costs no task wake-up per message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def submit(self, batch: Prepared) -> BatchResult:
        """Queues a batch for the next round and waits for its commit."""
        return await self.enqueue(batch)

    async def close(self) -> None:
        """Commits what is queued, then closes the ingestor's connection (a batch queued later opens another)."""
        while self._queue or self._threaded is not None:
            if self._threaded is not None:
                await asyncio.wait({self._threaded})
            else:
                self._flush()
        await asyncio.to_thread(self._ingestor.close)

    def _flush(self) -> None:
        """Commits the queued batches round after round on the event loop, until one must go to a worker thread
        (too large, another writer holds SQLite, or PostgreSQL): that one is committed there, then the rest."""
        self._flush_scheduled = False
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        while self._queue and self._threaded is None:
            round_ = [self._queue.popleft()]
            rows = len(round_[0][0])
            while self._queue and rows + len(self._queue[0][0]) <= self._max_round_rows:
                item = self._queue.popleft()
                round_.append(item)
                rows += len(item[0])
            self._queued_rows -= rows
            batches = [item[0] for item in round_]
            started = time.perf_counter()
            try:
                results = self._ingestor.commit_without_waiting(batches) if rows <= self._inline_round_rows else None
            except Exception as error:  # the round failed as a whole: every stream in it gets the error
                self._fail(round_, error)
                continue
            if results is None:
                self._threaded = asyncio.get_running_loop().create_task(
                    self._commit_in_thread(round_, batches, started), name="group-commit"
                )
                return
            _deliver(round_, batches, results, started)

    def _fail(self, round_: list[_Queued], error: Exception) -> None:
        """Fails a round and every batch queued behind it from the same streams: a stream's later batch must never
        be committed past a failed one (its points would be lost: the client resumes above the cursor)."""
        streams = {(batch.job_pk, batch.stream) for batch, _, _ in round_}
        failed = list(round_)
        kept: collections.deque[_Queued] = collections.deque()
        for item in self._queue:
            (failed if (item[0].job_pk, item[0].stream) in streams else kept).append(item)
        self._queue = kept
        self._queued_rows = sum(len(item[0]) for item in kept)
        for _, future, _ in failed:
            if not future.done():
                future.set_exception(error)

    async def _commit_in_thread(self, round_: list[_Queued], batches: list[Prepared], started: float) -> None:
        try:
            results = await asyncio.to_thread(self._ingestor.commit, batches)
        except Exception as error:
            self._fail(round_, error)
        except BaseException:  # cancelled (the loop is closing): the round's streams end with it
            for _, future, _ in round_:
                future.cancel()
            raise
        else:
            _deliver(round_, batches, results, started)
        finally:
            self._threaded = None
            if self._queue:
                self._flush_soon()


_Queued = tuple[Prepared, "asyncio.Future[BatchResult]", "Callable[[BatchResult], None] | None"]


def _deliver(round_: list[_Queued], batches: list[Prepared], results: list[BatchResult], started: float) -> None:
    metrics.record_round(batches, results, time.perf_counter() - started)
    for (_, future, on_commit), result in zip(round_, results, strict=True):
        if on_commit is not None:
            try:
                on_commit(result)
            except Exception:  # a subscriber's trouble never fails a commit
                log.exception("publishing a committed batch failed")
        if not future.done():
            future.set_result(result)


class IngestBudget:
    """Bounds the bytes of large telemetry messages the process holds parsed at once, all streams together.

    A message parsed, validated and queued for its commit takes several times its size in memory (about 5 to 10
    times: a protobuf message, then a Python tuple or column entry per point, until its commit ends). A stream
    takes a share of `limit` (the message's size, as received) before it parses a large message, and gives it back
    when the message's commit has ended (`hold`); past `limit` it waits, first come first served, holding only the
    bytes it received (and reads nothing more meanwhile, so HTTP/2 flow control stops its client). One message is
    let in when nothing else is held, whatever its size, so a message over `limit` waits but is never refused.
    """

    def __init__(self, limit: int) -> None:
        """`limit`: the most bytes held at once (TP_MAX_INGEST_BYTES_IN_FLIGHT), at least 1."""
        self.limit = limit
        self.held = 0
        """The bytes held now."""
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    async def acquire(self, size: int) -> None:
        """Waits until `size` bytes fit under the limit (or nothing is held), then holds them until `release`."""
        if not self._waiting and (self.held == 0 or self.held + size <= self.limit):
            self.held += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(size)  # granted as the wait was cancelled: given back at once
            else:
                self._grant()  # the next in line may fit now that this one no longer waits first
            raise

    def release(self, size: int) -> None:
        """Gives back `size` bytes that `acquire` granted."""
        self.held -= size
        self._grant()

    def hold(self, size: int, future: asyncio.Future[Any]) -> None:
        """Gives back `size` granted bytes once `future` (a message's commit) is done, whatever its outcome."""
        future.add_done_callback(lambda _: self.release(size))

    def _grant(self) -> None:
        """Lets in the streams at the head of the line whose share fits now."""
        while self._waiting:
            size, future = self._waiting[0]
            if future.done():  # its wait was cancelled
                self._waiting.popleft()
                continue
            if self.held and self.held + size > self.limit:
                return
            self._waiting.popleft()
            self.held += size
            future.set_result(None)
