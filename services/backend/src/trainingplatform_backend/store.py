"""Jobs, status transitions and history reads: the backend's blocking database operations.

Every method is synchronous and meant to run in a worker thread (`asyncio.to_thread`). The hot path of
telemetry ingest lives in `ingest.py`; this module holds everything else.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, or_, select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker
from trainingplatform_sdk.errors import NotFoundError

from trainingplatform_backend import statemachine
from trainingplatform_backend.auth import mint_job_token
from trainingplatform_backend.models import (
    LOGS_STREAM,
    METRICS_STREAM,
    EpochSummary,
    EpochSummaryMetric,
    IngestCursor,
    Job,
    JobArtifact,
    LogRecord,
    Metric,
    StatusEvent,
)

NOTIFY_CHANNEL = "tp_telemetry"
# Job ids per NOTIFY payload: 500 ids of up to 15 characters stay under PostgreSQL's 8000-byte payload limit.
NOTIFY_JOBS_PER_PAYLOAD = 500


def utcnow() -> dt.datetime:
    """The current time, UTC-aware."""
    return dt.datetime.now(dt.UTC)


def nan_from_null(value: float | None) -> float:
    """A stored metric value: NULL stands for NaN (SQLite cannot store NaN)."""
    return math.nan if value is None else value


@dataclass
class JobView:
    """A job as read from the database, with what GetJob returns beside it."""

    job: Job
    artifacts: list[JobArtifact] = field(default_factory=list)
    cursor: tuple[int, int] = (0, 0)
    status_events: list[StatusEvent] = field(default_factory=list)


@dataclass(frozen=True)
class Transition:
    """The outcome of a status change."""

    job_pk: int
    status: str
    changed: bool


@dataclass(frozen=True)
class SummaryView:
    """One epoch summary with its metrics."""

    epoch: int
    duration_seconds: float
    end_time: dt.datetime
    metrics: dict[str, float]


class Store:
    """The backend's database: jobs, status history, run information and history reads."""

    def __init__(self, engine: Engine, *, instance_id: str = "") -> None:
        """Args:
        engine: an engine from `db.create_db_engine` on a migrated database.
        instance_id: this process's id, stamped on cross-process notifications (PostgreSQL).
        """
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.instance_id = instance_id or uuid.uuid4().hex
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._cursor_query = text("SELECT stream, last_sequence FROM ingest_cursors WHERE job_pk = :job_pk")
        # SQLite has one writer at a time; serialising writers in-process avoids SQLITE_BUSY on lock upgrades.
        self._sqlite_write_lock = threading.Lock() if self.is_sqlite else None

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Held around every write transaction on SQLite; a no-op on PostgreSQL (row locks do the work)."""
        if self._sqlite_write_lock is None:
            yield
            return
        with self._sqlite_write_lock:
            yield

    def try_write_lock(self) -> bool:
        """Takes SQLite's in-process write lock if it is free right now (True on PostgreSQL, which has none);
        a True must be paired with `release_write_lock`."""
        return self._sqlite_write_lock is None or self._sqlite_write_lock.acquire(blocking=False)

    def release_write_lock(self) -> None:
        """Releases what `try_write_lock` took."""
        if self._sqlite_write_lock is not None:
            self._sqlite_write_lock.release()

    def notify(self, session_or_conn: Any, job_pks: int | Iterable[int]) -> None:
        """Tells other backend processes (PostgreSQL LISTEN/NOTIFY) that these jobs have new telemetry.

        Sent inside the writing transaction, so it is delivered exactly when the data is committed. The payload is
        `<instance>:<job>,<job>,...`, several notifications when the jobs do not fit PostgreSQL's 8000 bytes.
        """
        if self.is_sqlite:
            return
        pks = [job_pks] if isinstance(job_pks, int) else sorted(job_pks)
        for start in range(0, len(pks), NOTIFY_JOBS_PER_PAYLOAD):
            chunk = pks[start : start + NOTIFY_JOBS_PER_PAYLOAD]
            payload = f"{self.instance_id}:" + ",".join(map(str, chunk))
            session_or_conn.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": NOTIFY_CHANNEL, "payload": payload}
            )

    # --- jobs -------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        framework: str,
        model_name: str,
        display_name: str,
        model_config: dict[str, Any],
        dataset_config: dict[str, Any],
        training_config: dict[str, Any],
        advanced_config: dict[str, Any],
    ) -> tuple[JobView, str]:
        """Stores a PENDING job with its creation event and empty cursors; returns it and its telemetry token."""
        job_id = str(uuid.uuid4())
        token, token_hash = mint_job_token(job_id)
        now = utcnow()
        with self.write_lock(), self._sessions.begin() as session:
            job = Job(
                job_id=job_id,
                framework=framework,
                model_name=model_name,
                display_name=display_name,
                model_config=model_config,
                dataset_config=dataset_config,
                training_config=training_config,
                advanced_config=advanced_config,
                status=statemachine.PENDING,
                error_message="",
                error_detail="",
                created_at=now,
                updated_at=now,
                trainer_address="",
                trainer_run_id="",
                mlflow_run_id="",
                mlflow_tracking_uri="",
                telemetry_token_hash=token_hash,
                status_sequence=1,
            )
            session.add(job)
            session.flush()
            session.add(
                StatusEvent(
                    job_pk=job.id,
                    sequence=1,
                    from_status="UNSPECIFIED",
                    to_status=statemachine.PENDING,
                    reason="job created",
                    error_message="",
                    created_at=now,
                )
            )
            for stream in (METRICS_STREAM, LOGS_STREAM):
                session.add(
                    IngestCursor(
                        job_pk=job.id,
                        stream=stream,
                        last_sequence=0,
                        committed_count=0,
                        duplicate_count=0,
                        missing_count=0,
                        updated_at=now,
                    )
                )
            self.notify(session, job.id)
        return self.get_job(job_id), token

    def token_hash(self, job_id: str) -> str | None:
        """The stored telemetry token hash of a job, or None when there is no such job."""
        with self._sessions() as session:
            return session.scalar(select(Job.telemetry_token_hash).where(Job.job_id == job_id))

    def job_pk(self, job_id: str) -> int:
        """The internal key of a job.

        Raises:
            NotFoundError: no job has this id.
        """
        with self._sessions() as session:
            pk = session.scalar(select(Job.id).where(Job.job_id == job_id))
        if pk is None:
            raise NotFoundError(f"job {job_id!r} does not exist")
        return pk

    def get_job(self, job_id: str, *, with_events: bool = False) -> JobView:
        """One job with its artifacts and cursor (and status events when asked).

        Raises:
            NotFoundError: no job has this id.
        """
        with self._sessions() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id))
            if job is None:
                raise NotFoundError(f"job {job_id!r} does not exist")
            return self._view(session, job, with_events=with_events)

    def _view(self, session: Session, job: Job, *, with_events: bool) -> JobView:
        artifacts = list(
            session.scalars(select(JobArtifact).where(JobArtifact.job_pk == job.id).order_by(JobArtifact.name))
        )
        cursors = dict(
            session.execute(
                select(IngestCursor.stream, IngestCursor.last_sequence).where(IngestCursor.job_pk == job.id)
            ).all()
        )
        events: list[StatusEvent] = []
        if with_events:
            events = list(
                session.scalars(select(StatusEvent).where(StatusEvent.job_pk == job.id).order_by(StatusEvent.sequence))
            )
        return JobView(job, artifacts, (cursors.get(METRICS_STREAM, 0), cursors.get(LOGS_STREAM, 0)), events)

    def list_jobs(
        self, *, statuses: Sequence[str], framework: str, limit: int, after: tuple[dt.datetime, int] | None
    ) -> list[JobView]:
        """Jobs newest first (by creation time, then id), after the keyset position `after`."""
        query = select(Job)
        if statuses:
            query = query.where(Job.status.in_(list(statuses)))
        if framework:
            query = query.where(Job.framework == framework)
        if after is not None:
            created, pk = after
            query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < pk)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        with self._sessions() as session:
            return [self._view(session, job, with_events=False) for job in session.scalars(query)]

    def set_dispatch(self, job_id: str, *, trainer_address: str, trainer_run_id: str) -> None:
        """Records which trainer runs the job."""
        with self.write_lock(), self._sessions.begin() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id))
            if job is None:
                raise NotFoundError(f"job {job_id!r} does not exist")
            job.trainer_address = trainer_address
            job.trainer_run_id = trainer_run_id
            job.updated_at = utcnow()

    def transition(
        self, job_id: str, target: str, *, reason: str = "", error_message: str = "", error_detail: str = ""
    ) -> Transition:
        """Moves a job to `target`, storing the event; a repeat of the current status changes nothing.

        Raises:
            NotFoundError: no such job.
            FailedPreconditionError: the state machine forbids the change.
        """
        now = utcnow()
        with self.write_lock(), self._sessions.begin() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id).with_for_update())
            if job is None:
                raise NotFoundError(f"job {job_id!r} does not exist")
            if not statemachine.check_transition(job.status, target):
                return Transition(job.id, job.status, False)
            job.status_sequence += 1
            session.add(
                StatusEvent(
                    job_pk=job.id,
                    sequence=job.status_sequence,
                    from_status=job.status,
                    to_status=target,
                    reason=reason,
                    error_message=error_message,
                    created_at=now,
                )
            )
            job.status = target
            job.updated_at = now
            if target == statemachine.RUNNING and job.started_at is None:
                job.started_at = now
            if target in statemachine.TERMINAL:
                job.ended_at = now
            if target == statemachine.FAILED:
                job.error_message = error_message
                job.error_detail = error_detail
            self.notify(session, job.id)
            return Transition(job.id, target, True)

    def record_epoch_summary(
        self, job_pk: int, *, epoch: int, duration_seconds: float, end_time: dt.datetime, metrics: dict[str, float]
    ) -> None:
        """Stores (or replaces) the summary of one epoch."""
        with self.write_lock(), self._sessions.begin() as session:
            session.execute(
                delete(EpochSummaryMetric).where(
                    and_(EpochSummaryMetric.job_pk == job_pk, EpochSummaryMetric.epoch == epoch)
                )
            )
            session.merge(
                EpochSummary(job_pk=job_pk, epoch=epoch, duration_seconds=duration_seconds, end_time=end_time)
            )
            session.add_all(
                EpochSummaryMetric(job_pk=job_pk, epoch=epoch, key=key, value=value) for key, value in metrics.items()
            )
            self.notify(session, job_pk)

    def report_run_info(
        self, job_pk: int, *, mlflow_run_id: str, mlflow_tracking_uri: str, artifacts: Sequence[tuple[str, str, int]]
    ) -> None:
        """Stores the MLflow run and merges artifacts by name."""
        with self.write_lock(), self._sessions.begin() as session:
            job = session.get(Job, job_pk)
            if job is None:
                raise NotFoundError("job does not exist")
            if mlflow_run_id:
                job.mlflow_run_id = mlflow_run_id
            if mlflow_tracking_uri:
                job.mlflow_tracking_uri = mlflow_tracking_uri
            for name, uri, size in artifacts:
                session.merge(JobArtifact(job_pk=job_pk, name=name, uri=uri, size_bytes=size))
            job.updated_at = utcnow()
            self.notify(session, job_pk)

    # --- history reads ----------------------------------------------------------------------------------

    def cursor(self, job_pk: int) -> tuple[int, int]:
        """The committed (metric, log) sequences of a job. Every trainer asks it about once a second, so it is a
        plain query on a pooled connection, without an ORM session."""
        with self.engine.connect() as conn:
            cursors: dict[str, int] = dict(conn.execute(self._cursor_query, {"job_pk": job_pk}).all())
        return cursors.get(METRICS_STREAM, 0), cursors.get(LOGS_STREAM, 0)

    def metrics_after(
        self, job_pk: int, after: int, limit: int, keys: Sequence[str] = ()
    ) -> list[tuple[int, str, float | None, int | None, int | None, float]]:
        """Up to `limit` points with sequence > `after`, in sequence order:
        (sequence, key, value, step, epoch, wall_time)."""
        query = (
            select(Metric.sequence, Metric.key, Metric.value, Metric.step, Metric.epoch, Metric.wall_time)
            .where(Metric.job_pk == job_pk, Metric.sequence > after)
            .order_by(Metric.sequence)
            .limit(limit)
        )
        if keys:
            query = query.where(Metric.key.in_(list(keys)))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]

    def logs_after(self, job_pk: int, after: int, limit: int, min_level: int = 0) -> list[LogRecord]:
        """Up to `limit` log records with sequence > `after`, in sequence order."""
        query = (
            select(LogRecord)
            .where(LogRecord.job_pk == job_pk, LogRecord.sequence > after)
            .order_by(LogRecord.sequence)
            .limit(limit)
        )
        if min_level:
            query = query.where(LogRecord.level >= min_level)
        with self._sessions() as session:
            return list(session.scalars(query))

    def status_events_after(self, job_pk: int, after: int) -> list[StatusEvent]:
        """Status events with sequence > `after`, oldest first."""
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(StatusEvent)
                    .where(StatusEvent.job_pk == job_pk, StatusEvent.sequence > after)
                    .order_by(StatusEvent.sequence)
                )
            )

    def epoch_summaries_after(self, job_pk: int, after_epoch: int, limit: int = 1000) -> list[SummaryView]:
        """Epoch summaries with epoch > `after_epoch` (use -1 for all), in epoch order."""
        with self._sessions() as session:
            summaries = list(
                session.scalars(
                    select(EpochSummary)
                    .where(EpochSummary.job_pk == job_pk, EpochSummary.epoch > after_epoch)
                    .order_by(EpochSummary.epoch)
                    .limit(limit)
                )
            )
            if not summaries:
                return []
            wanted = [(job_pk, s.epoch) for s in summaries]
            rows = session.execute(
                select(EpochSummaryMetric.epoch, EpochSummaryMetric.key, EpochSummaryMetric.value).where(
                    tuple_(EpochSummaryMetric.job_pk, EpochSummaryMetric.epoch).in_(wanted)
                )
            )
            metrics: dict[int, dict[str, float]] = {}
            for epoch, key, value in rows:
                metrics.setdefault(epoch, {})[key] = nan_from_null(value)
        return [SummaryView(s.epoch, s.duration_seconds, s.end_time, metrics.get(s.epoch, {})) for s in summaries]
