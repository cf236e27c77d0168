"""Exactly-once ingest of telemetry batches: validate, insert, advance the cursor, all in one transaction.

The primary key (job, sequence) of the metrics and logs tables is what guarantees each point is stored once:
rows are inserted with ON CONFLICT DO NOTHING, so a resent point is counted as a duplicate and ignored. The
job's cursor (highest committed sequence) advances in the same transaction, so a client that asks for it after
a broken stream resumes exactly where the commits stopped.

This is the backend's hot path (hundreds of thousands of points per second), so it bypasses the ORM:
SQLite gets one `executemany`, PostgreSQL one `INSERT ... SELECT FROM unnest(arrays)` per batch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.errors import InvalidArgumentError, quote
from trainingplatform_sdk.spec import limits

from trainingplatform_backend.models import LOGS_STREAM, METRICS_STREAM
from trainingplatform_backend.store import Store, utcnow

log = logging.getLogger(__name__)

# Batches and group-commit rounds of up to this many rows are validated and (SQLite) committed on the event loop:
# that takes microseconds, a hop to a worker thread and back costs more. Larger ones go to a worker thread.
INLINE_ROWS = 256

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
    if min(sequences) < 1:
        raise InvalidArgumentError(f"{what} sequence numbers start at 1; got {min(sequences)}")
    if max(sequences) > limits.MAX_SEQUENCE:
        raise InvalidArgumentError(
            f"{what} sequence must be at most {limits.MAX_SEQUENCE} (MAX_SEQUENCE); got {max(sequences)}"
        )
    present_steps = [s for s in steps if s is not None]
    if present_steps and min(present_steps) < 0:
        raise InvalidArgumentError(f"{what} step must be >= 0")
    if present_steps and max(present_steps) > limits.MAX_STEP:
        raise InvalidArgumentError(
            f"{what} step must be at most {limits.MAX_STEP} (MAX_STEP); got {max(present_steps)}"
        )
    present_epochs = [e for e in epochs if e is not None]
    if present_epochs and min(present_epochs) < 0:
        raise InvalidArgumentError(f"{what} epoch must be >= 0")
    if present_epochs and max(present_epochs) > limits.MAX_EPOCH:
        raise InvalidArgumentError(
            f"{what} epoch must be at most {limits.MAX_EPOCH} (MAX_EPOCH); got {max(present_epochs)}"
        )
    if not all(map(math.isfinite, wall_times)):
        raise InvalidArgumentError(f"{what} wall_time must be a finite number of seconds since the Unix epoch")


def check_metric_key(key: str, field: str = "key") -> None:
    """Raises InvalidArgumentError (naming `field`) unless `key` is 1 to 250 characters without control
    characters."""
    if not key:
        raise InvalidArgumentError(f"{field}: a metric key must not be empty")
    if len(key) > limits.MAX_KEY_CHARS:
        raise InvalidArgumentError(
            f"{field}: metric key {quote(key, 40)} is {len(key)} characters; the limit is {limits.MAX_KEY_CHARS}"
        )
    if _CONTROL.search(key):
        raise InvalidArgumentError(f"{field}: metric key {quote(key)} contains control characters")


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


@dataclass
class Prepared:
    """A validated batch of one stream, as rows ready to insert."""

    job_pk: int
    stream: str
    rows: list[tuple[Any, ...]]
    sequences: Sequence[int]


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

    def prepare_metrics(self, job_pk: int, points: Sequence[telemetry_pb2.MetricPoint]) -> Prepared:
        """Validates one batch of metric points and turns it into rows.

        Raises:
            InvalidArgumentError: a point breaks the contract's rules; the batch must be refused whole.
        """
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
        sequences = [row[1] for row in rows]
        _check_common(sequences, [row[4] for row in rows], [row[5] for row in rows], [row[6] for row in rows], "metric")
        for key in {row[2] for row in rows}:
            check_metric_key(key)
        return Prepared(job_pk, METRICS_STREAM, rows, sequences)

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
        _, sequences, levels, _, epochs, steps, wall_times, _, ranks = zip(*rows, strict=True)
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
        # SQLite: the DBAPI connection directly. SQLAlchemy's Connection adds more Python per round than a small
        # transaction costs, and a file database has no dropped connections for it to handle.
        raw = self._engine.raw_connection()
        try:
            results = self._write_round(_SqliteConnection(raw.cursor()), batches)
            raw.commit()
            return results
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()

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
            missing = (last - previous) - len({s for s in batch.sequences if s > previous})
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
        self, conn: Any, plans: list[tuple[Prepared, list[tuple[Any, ...]], list[tuple[Any, ...]], int, int, int]]
    ) -> list[int]:
        """Inserts every plan's rows; returns the rows stored per plan."""
        stored = [len(fresh) for _, fresh, _, _, _, _ in plans]
        if self._store.is_sqlite:
            # No network here: one executemany per batch keeps each batch's exact count of stored rows.
            for index, (batch, fresh, older, *_) in enumerate(plans):
                stored[index] = conn.exec_driver_sql(self._tables[batch.stream].insert, fresh + older).rowcount
            return stored
        # Rows above the locked cursor cannot exist yet: they go in one binary COPY per table for the whole round.
        driver = conn.connection.driver_connection
        for stream, table in self._tables.items():
            fresh_rows = [row for batch, fresh, *_ in plans if batch.stream == stream for row in fresh]
            if not fresh_rows:
                continue
            with driver.cursor() as cursor, cursor.copy(table.copy) as copy:
                copy.set_types(list(table.pg_types))
                for row in fresh_rows:
                    copy.write_row(row)
        # Rows at or below the cursor (resends, holes being filled) may exist: ON CONFLICT DO NOTHING, counted.
        for index, (batch, _, older, *_) in enumerate(plans):
            if older:
                columns = list(zip(*older, strict=True))
                params = (batch.job_pk, *(list(c) for c in columns[1:]))
                stored[index] += conn.exec_driver_sql(self._tables[batch.stream].insert, params).rowcount
        return stored


def _split(batch: Prepared, previous: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The batch's rows above `previous` (first occurrence of each sequence) and the others."""
    sequences = batch.sequences
    if sequences[0] > previous and all(a < b for a, b in itertools.pairwise(sequences)):
        return batch.rows, []
    first: dict[int, tuple[Any, ...]] = {}
    for row in batch.rows:
        first.setdefault(row[1], row)
    fresh = [row for sequence, row in first.items() if sequence > previous]
    older = [row for sequence, row in first.items() if sequence <= previous]
    return fresh, older


class _SqliteConnection:
    """The one method of SQLAlchemy's Connection that a round uses, over a DBAPI cursor of sqlite3."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def exec_driver_sql(self, statement: str, parameters: Any = ()) -> Any:
        if isinstance(parameters, list):
            return self._cursor.executemany(statement, parameters)
        return self._cursor.execute(statement, parameters)


class GroupCommitter:
    """Gathers the batches every open stream submits and commits them together, one transaction per round.

    With a hundred trainers each sending a small batch every 50 ms, a transaction per batch would spend the
    backend's time on commits; a round takes whatever arrived while the previous one committed. Each stream
    still waits for its own batch's commit before it acknowledges anything.

    A round of at most `inline_round_rows` rows on SQLite is committed on the event loop when no other writer holds
    the database (`Ingestor.commit_without_waiting`); any other round goes to a worker thread. A trainer that logs a
    few points per flush interval then costs no thread hand-offs, which on a machine shared with training cost
    more CPU than the commit itself.
    """

    def __init__(
        self, ingestor: Ingestor, *, max_round_rows: int = 100_000, inline_round_rows: int = INLINE_ROWS
    ) -> None:
        self._ingestor = ingestor
        self._max_round_rows = max_round_rows
        self._inline_round_rows = inline_round_rows
        self._queue: list[tuple[Prepared, asyncio.Future[BatchResult]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the committing task."""
        self._task = asyncio.create_task(self._run(), name="group-commit")

    def enqueue(self, batch: Prepared) -> asyncio.Future[BatchResult]:
        """Queues a batch for the next round; the future completes with its commit (or the round's error)."""
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._wakeup.set()
        return future

    async def submit(self, batch: Prepared) -> BatchResult:
        """Queues a batch for the next round and waits for its commit."""
        return await self.enqueue(batch)

    async def close(self) -> None:
        """Commits what is queued, then stops."""
        if self._task is None:
            return
        while self._queue:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                round_: list[Any] = []
                rows = 0
                while self._queue and (not round_ or rows + len(self._queue[0][0].rows) <= self._max_round_rows):
                    item = self._queue.pop(0)
                    round_.append(item)
                    rows += len(item[0].rows)
                batches = [batch for batch, _ in round_]
                try:
                    results = None
                    if rows <= self._inline_round_rows:
                        results = self._ingestor.commit_without_waiting(batches)
                    if results is None:
                        results = await asyncio.to_thread(self._ingestor.commit, batches)
                except Exception as error:  # the round failed as a whole: every stream in it gets the error
                    for _, future in round_:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(round_, results, strict=True):
                    if not future.done():
                        future.set_result(result)
