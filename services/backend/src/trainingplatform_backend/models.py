"""The backend's tables, as SQLAlchemy 2.0 typed declarative models.

The schema is created and changed only by the Alembic migrations in `migrations/`; a test runs `alembic check`
to prove the migrations and these models agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine, UserDefinedType

# Stable constraint names so migrations are the same on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only makes INTEGER PRIMARY KEY an auto-increment rowid alias.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")

METRICS_STREAM = "metrics"
LOGS_STREAM = "logs"


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every database (SQLite keeps no zone, so it is added back on read)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: the backend stores UTC-aware timestamps only")
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


class _NoAffinity(UserDefinedType[float]):
    """SQLite's column without a declared type: no type affinity, so a bound double is stored as it is."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return ""


class ExactDouble(TypeDecorator[float]):
    """A 64-bit float column that keeps every double bit for bit (NaN, which SQLite stores as NULL, aside).

    PostgreSQL: `double precision`. SQLite: a column without a declared type. SQLite writes an integral value into
    a column of REAL affinity as an integer, which loses the sign of -0.0; a column without affinity stores the
    double's 8 bytes as they are. The values are still numbers (storage class REAL) that SQL compares, sorts and
    aggregates (min, max, avg) like any REAL column.
    """

    impl = Float(precision=53)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_NoAffinity())
        return dialect.type_descriptor(Float(precision=53))


class Base(DeclarativeBase):
    """Declarative base with the project's naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """A training job: its full specification, status and where its results are."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), unique=True)
    framework: Mapped[str] = mapped_column(String(64), index=True)
    display_name: Mapped[str] = mapped_column(String(250), default="")
    model_name: Mapped[str] = mapped_column(String(250))
    model_config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    dataset_config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    training_config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    advanced_config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    status: Mapped[str] = mapped_column(String(16), index=True)
    error_message: Mapped[str] = mapped_column(Text, default="")
    error_detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    trainer_address: Mapped[str] = mapped_column(String(250), default="")
    trainer_run_id: Mapped[str] = mapped_column(String(250), default="")
    mlflow_run_id: Mapped[str] = mapped_column(String(250), default="")
    mlflow_tracking_uri: Mapped[str] = mapped_column(String(2000), default="")
    # SHA-256 of the job's telemetry token; the token itself is never stored.
    telemetry_token_hash: Mapped[str] = mapped_column(String(64))
    # Number of status events so far: the next event's sequence is this + 1.
    status_sequence: Mapped[int] = mapped_column(Integer, default=0)
    # CreateJob's idempotency key (CreateJobRequest.request_id); NULL when the caller sent none.
    request_id: Mapped[str | None] = mapped_column(String(64), unique=True, index=True)
    # SHA-256 of the rest of the request that created the job, to tell a retry from a reused key.
    request_hash: Mapped[str] = mapped_column(String(64), default="")
    # The current dispatch attempt (1, 2, ...; 0 before the first): its token is the only trainer token accepted.
    dispatch_attempt: Mapped[int] = mapped_column(Integer, default=0)
    # The trainer the current attempt was sent to.
    dispatch_attempt_address: Mapped[str] = mapped_column(String(250), default="")
    # A backend dispatching this QUEUED job holds it until then; another (or a restarted one) takes it after.
    dispatch_claimed_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Why the last dispatch pass found no trainer (every replica's reason), for the dispatch timeout's error.
    dispatch_reasons: Mapped[str] = mapped_column(Text, default="")
    # When a trainer last answered busy (RESOURCE_EXHAUSTED) to the job's dispatch: the dispatch timeout counts from
    # then (from the job's creation before), so waiting for a busy trainer's slot never fails the job.
    dispatch_busy_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # When a telemetry call of the job's reporter last reached a backend (written at most every few seconds per
    # backend process), for a job that no trainer runs: the reporter lease fails it when this grows too old.
    reporter_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Whether the backend hands the job to a trainer (CreateJob's `dispatch`): false for a job whose reporter runs
    # the training itself (`tp run`), which the dispatcher never takes, whatever its status.
    dispatch: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class JobArtifact(Base):
    """A file a job produced (checkpoint, results), by name."""

    __tablename__ = "job_artifacts"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(250), primary_key=True)
    uri: Mapped[str] = mapped_column(String(2000))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)


class Metric(Base):
    """One metric point. The primary key (job, sequence) is what makes ingest exactly-once.

    `value` is NULL only for NaN: SQLite turns a bound NaN into NULL, so NULL is read back as NaN everywhere.
    Every other double, -0.0 included, is stored exactly (`ExactDouble`).
    """

    __tablename__ = "metrics"
    # The hot table has no foreign key and no secondary index: each would halve PostgreSQL's ingest rate;
    # the job is resolved before any insert and jobs are never deleted. History reads by key scan the job's
    # primary-key range.
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_pk: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(250))
    value: Mapped[float | None] = mapped_column(ExactDouble)
    step: Mapped[int | None] = mapped_column(BigInteger)
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    wall_time: Mapped[float] = mapped_column(ExactDouble)


class LogRecord(Base):
    """One log record; the primary key (job, sequence) makes ingest exactly-once."""

    __tablename__ = "logs"
    # No foreign key, like `metrics`: this is a hot table.
    __table_args__ = ({"sqlite_with_rowid": False},)

    job_pk: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger)
    message: Mapped[str] = mapped_column(Text)
    epoch: Mapped[int | None] = mapped_column(BigInteger)
    step: Mapped[int | None] = mapped_column(BigInteger)
    wall_time: Mapped[float] = mapped_column(ExactDouble)
    source: Mapped[str] = mapped_column(String(250), default="")
    rank: Mapped[int] = mapped_column(Integer, default=0)


class StatusEvent(Base):
    """One status transition of a job, with its time and reason."""

    __tablename__ = "status_events"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer, primary_key=True)
    from_status: Mapped[str] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    error_message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class EpochSummary(Base):
    """The summary of one epoch of a job (the old `log_epoch_summary`)."""

    __tablename__ = "epoch_summaries"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    duration_seconds: Mapped[float] = mapped_column(ExactDouble)
    end_time: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class EpochSummaryMetric(Base):
    """One metric of an epoch summary. Rows, not a JSON document, so NaN and Infinity survive exactly."""

    __tablename__ = "epoch_summary_metrics"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(String(250), primary_key=True)
    value: Mapped[float | None] = mapped_column(ExactDouble)


class IngestCursor(Base):
    """A job's committed position in one telemetry stream, advanced in the same transaction as the rows."""

    __tablename__ = "ingest_cursors"

    job_pk: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    stream: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    committed_count: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicate_count: Mapped[int] = mapped_column(BigInteger, default=0)
    missing_count: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
