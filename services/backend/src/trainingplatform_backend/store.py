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
from typing import Any, NamedTuple

import grpc
from sqlalchemy import Engine, and_, delete, func, or_, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from trainingplatform_sdk.errors import NotFoundError, PlatformError, quote
from trainingplatform_sdk.spec import limits

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
#: Where backend processes announce the jobs they have live subscribers of (`announce_watched`).
WATCH_CHANNEL = "tp_watched"
# Job ids per NOTIFY payload: 450 of up to 16 characters (15 digits, a comma) and the instance id stay under
# PostgreSQL's 8000-byte payload limit.
NOTIFY_JOBS_PER_PAYLOAD = 450


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


class SeriesBucket(NamedTuple):
    """The points of one key within one step bucket (`Store.metric_series`). A named tuple: an answer has up to
    tens of thousands."""

    first_step: int
    last_step: int
    min: float
    max: float
    last: float
    points: int  # `count` on the wire (a named tuple has a count method)
    first_epoch: int | None
    last_epoch: int | None
    nan_count: int


# Most bytes of a MetricBucket on the wire (9 fields of at most 10 bytes each, and its framing), and of a
# MetricSeries beside its key and buckets: what bounds GetMetricSeries's answer.
SERIES_BUCKET_BYTES = 96
SERIES_KEY_BYTES = 24
# (key, bucket) as one integer group number, key index * this + bucket, where every key's bucket numbers are below
# it (grouping by one integer is about a third faster on PostgreSQL than by two columns, 20 keys of 50,000 points).
_SERIES_GROUPS_PER_KEY = 1 << 20
_SERIES_RANGES_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS series_ranges "
    "(key TEXT PRIMARY KEY, idx INTEGER, lo INTEGER, hi INTEGER, width INTEGER) WITHOUT ROWID"
)
# The bucketing of `Store.metric_series`: one scan of the job's points in its primary-key range. `{idx}` is the
# key's index in the sorted ranges, `{value}` the value with NaN as NULL (PostgreSQL stores NaN, which would be the
# highest of every bucket holding one), `{bucket}` the group number: `(step - lo) / width` over the key's range
# (integer division; a width of ceil(span / max_points) makes at most max_points buckets, without the overflow of
# step * max_points). The last value is read back by primary key at the bucket's highest sequence, in a correlated
# subquery: a join lets PostgreSQL, which cannot estimate the number of buckets, hash the job's every point.
_SERIES_BUCKETS = """
SELECT b.idx, b.first_step, b.last_step, b.vmin, b.vmax, b.n, b.nan_n, b.e0, b.e1,
    (SELECT l.value FROM metrics l WHERE l.job_pk = :job_pk AND l.sequence = b.last_sequence) AS last_value
FROM (
    SELECT {idx} AS idx, {bucket} AS bucket, min(m.step) AS first_step, max(m.step) AS last_step,
        min({value}) AS vmin, max({value}) AS vmax, count(*) AS n, count(*) - count({value}) AS nan_n,
        min(m.epoch) AS e0, max(m.epoch) AS e1, max(m.sequence) AS last_sequence
    FROM metrics m {ranges}
    WHERE m.job_pk = :job_pk AND m.sequence <= :cursor AND {step_range}
    GROUP BY {group}
) b
ORDER BY b.idx, b.first_step
"""


def _bucket_width(first: int, last: int, points: int, max_points: int) -> int:
    """The step width of a key's buckets: its steps `first` to `last` in at most `max_points` buckets of equal width;
    one step when the key has at most `max_points` points there, so that each of its steps has a bucket of its own (at
    most `max_points` of them: empty buckets are left out), however far apart the steps are."""
    if points <= max_points:
        return 1
    return (last - first + max_points) // max_points


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
        self._notify(session_or_conn, NOTIFY_CHANNEL, [job_pks] if isinstance(job_pks, int) else sorted(job_pks))

    def announce_watched(self, job_pks: Iterable[int]) -> None:
        """Tells other backend processes that this one has live subscribers of these jobs (their telemetry streams
        may land on another process, which then tells its trainers to keep their short flush interval).

        `NOTIFY tp_watched, '<instance>:<job>,<job>,...'`, on a channel of its own: the commits' channel keeps its
        payload.
        """
        if self.is_sqlite:
            return
        with self.engine.begin() as conn:
            self._notify(conn, WATCH_CHANNEL, sorted(job_pks))

    def _notify(self, session_or_conn: Any, channel: str, pks: list[int]) -> None:
        for start in range(0, len(pks), NOTIFY_JOBS_PER_PAYLOAD):
            chunk = pks[start : start + NOTIFY_JOBS_PER_PAYLOAD]
            payload = f"{self.instance_id}:" + ",".join(map(str, chunk))
            session_or_conn.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
            )

    # --- jobs -------------------------------------------------------------------------------------------

    def create_job(
        self,
        *,
        job_id: str = "",
        token_hash: str = "",
        queued: bool = False,
        request_id: str = "",
        request_hash: str = "",
        legacy_request_hash: str = "",
        framework: str,
        model_name: str,
        display_name: str,
        model_config: dict[str, Any],
        dataset_config: dict[str, Any],
        training_config: dict[str, Any],
        advanced_config: dict[str, Any],
        max_waiting: int = 0,
    ) -> tuple[JobView, bool]:
        """Stores a PENDING job (then QUEUED when `queued`: the dispatcher takes it from there) with its events and
        empty cursors; returns it and True. With a `request_id` an earlier job created with it is returned
        instead, with False. Without `job_id` and `token_hash` a new id and a random token's hash are used.
        `max_waiting` (TP_MAX_WAITING_JOBS; 0: no limit) bounds the jobs not yet started (PENDING or QUEUED); with
        several backend processes on PostgreSQL concurrent creates may pass it by a few. `legacy_request_hash`:
        see `job_of_request`.

        Raises:
            PlatformError: ALREADY_EXISTS, the request_id was used by a request with another `request_hash`;
                RESOURCE_EXHAUSTED, `max_waiting` jobs are waiting to start.
        """
        job_id = job_id or str(uuid.uuid4())
        token_hash = token_hash or mint_job_token(job_id)[1]
        if request_id:
            existing = self._job_of_request(request_id, request_hash, legacy_request_hash)
            if existing is not None:
                return existing, False
        try:
            self._insert_job(
                job_id=job_id,
                token_hash=token_hash,
                queued=queued,
                request_id=request_id,
                request_hash=request_hash,
                framework=framework,
                model_name=model_name,
                display_name=display_name,
                model_config=model_config,
                dataset_config=dataset_config,
                training_config=training_config,
                advanced_config=advanced_config,
                max_waiting=max_waiting,
            )
        except IntegrityError:
            existing = self._job_of_request(request_id, request_hash, legacy_request_hash) if request_id else None
            if existing is None:
                raise
            return existing, False  # a concurrent retry with the same key won
        return self.get_job(job_id), True

    def job_of_request(self, request_id: str, request_hash: str, legacy_request_hash: str = "") -> JobView | None:
        """The job an earlier CreateJob with `request_id` created, or None when the key is unused. The stored hash
        must be `request_hash`, or `legacy_request_hash` when given (the hash earlier versions stored for the same
        request: `jobs_service.request_hashes`).

        Raises:
            PlatformError: ALREADY_EXISTS, the request_id was used by a request with another `request_hash`.
        """
        return self._job_of_request(request_id, request_hash, legacy_request_hash)

    def _job_of_request(self, request_id: str, request_hash: str, legacy_request_hash: str = "") -> JobView | None:
        with self._sessions() as session:
            job = session.scalar(select(Job).where(Job.request_id == request_id))
            if job is None:
                return None
            if job.request_hash != request_hash and not (
                legacy_request_hash and job.request_hash == legacy_request_hash
            ):
                raise PlatformError(
                    f"request_id {request_id!r} was already used by a different CreateJob request (job "
                    f"{job.job_id}); send a new request_id for a new job",
                    code=grpc.StatusCode.ALREADY_EXISTS,
                )
            return self._view(session, job, with_events=False)

    @staticmethod
    def _check_waiting(session: Session, max_waiting: int) -> None:
        waiting = session.scalar(
            select(func.count()).select_from(Job).where(Job.status.in_((statemachine.PENDING, statemachine.QUEUED)))
        )
        if waiting is not None and waiting >= max_waiting:
            raise PlatformError(
                f"{waiting} jobs are waiting to start, the most TP_MAX_WAITING_JOBS ({max_waiting}) allows: cancel "
                "some or wait until trainers take them, then create this job again",
                code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            )

    def _insert_job(
        self,
        *,
        job_id: str,
        token_hash: str,
        queued: bool,
        request_id: str,
        request_hash: str,
        framework: str,
        model_name: str,
        display_name: str,
        model_config: dict[str, Any],
        dataset_config: dict[str, Any],
        training_config: dict[str, Any],
        advanced_config: dict[str, Any],
        max_waiting: int,
    ) -> None:
        now = utcnow()
        with self.write_lock(), self._sessions.begin() as session:
            if max_waiting:
                self._check_waiting(session, max_waiting)
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
                status_sequence=2 if queued else 1,
                request_id=request_id or None,
                request_hash=request_hash,
                dispatch_attempt=0,
                dispatch_attempt_address="",
                dispatch_reasons="",
                dispatch=queued,
            )
            if queued:
                job.status = statemachine.QUEUED
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
            if queued:
                session.add(
                    StatusEvent(
                        job_pk=job.id,
                        sequence=2,
                        from_status=statemachine.PENDING,
                        to_status=statemachine.QUEUED,
                        reason="waiting for a trainer",
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
            raise NotFoundError(f"job {quote(job_id)} does not exist")
        return pk

    def get_job(self, job_id: str, *, with_events: bool = False) -> JobView:
        """One job with its artifacts and cursor (and status events when asked).

        Raises:
            NotFoundError: no job has this id.
        """
        with self._sessions() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id))
            if job is None:
                raise NotFoundError(f"job {quote(job_id)} does not exist")
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
        self,
        *,
        statuses: Sequence[str],
        framework: str,
        limit: int,
        after: tuple[dt.datetime, int] | None,
        text: str = "",
    ) -> list[JobView]:
        """Jobs newest first (by creation time, then id), after the keyset position `after`; with `text`, only those
        whose display name, job id or model name contains it (ASCII letters in any case; `%` and `_` literal)."""
        query = select(Job)
        if statuses:
            query = query.where(Job.status.in_(list(statuses)))
        if framework:
            query = query.where(Job.framework == framework)
        if text:
            pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(*(column.ilike(pattern, escape="\\") for column in (Job.display_name, Job.job_id, Job.model_name)))
            )
        if after is not None:
            created, pk = after
            query = query.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < pk)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        with self._sessions() as session:
            return [self._view(session, job, with_events=False) for job in session.scalars(query)]

    def dispatchable(self, now: dt.datetime) -> list[tuple[str, str]]:
        """QUEUED jobs created to be dispatched (never one created with dispatch=false, which its own reporter may
        have moved to QUEUED) that no trainer has accepted yet and no backend holds (its claim expired or never
        was), oldest first, as (job id, framework)."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(Job.job_id, Job.framework)
                    .where(
                        Job.status == statemachine.QUEUED,
                        Job.trainer_address == "",
                        Job.dispatch,
                        or_(Job.dispatch_claimed_until.is_(None), Job.dispatch_claimed_until < now),
                    )
                    .order_by(Job.id)
                ).tuples()
            )

    def claim_dispatch(self, job_id: str, *, now: dt.datetime, until: dt.datetime) -> Job | None:
        """Takes a dispatchable job for this backend until `until` (one UPDATE: of several backends, one wins);
        returns the job, or None when it is no longer QUEUED, already dispatched, held by another backend or
        created with dispatch=false."""
        with self.write_lock(), self._sessions.begin() as session:
            claimed = session.execute(
                update(Job)
                .where(
                    Job.job_id == job_id,
                    Job.status == statemachine.QUEUED,
                    Job.trainer_address == "",
                    Job.dispatch,
                    or_(Job.dispatch_claimed_until.is_(None), Job.dispatch_claimed_until < now),
                )
                .values(dispatch_claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return session.scalar(select(Job).where(Job.job_id == job_id))

    def renew_dispatch(self, job_id: str, *, held: dt.datetime, until: dt.datetime) -> bool:
        """Extends this backend's claim, still `held` (compare and set: the claim's expiry is its owner's mark), to
        `until`. False when the claim is no longer this backend's: released, settled, or taken over after it
        expired."""
        with self.write_lock(), self._sessions.begin() as session:
            renewed = session.execute(
                update(Job)
                .where(Job.job_id == job_id, Job.dispatch_claimed_until == held)
                .values(dispatch_claimed_until=until)
                .execution_options(synchronize_session=False)
            )
            return renewed.rowcount == 1  # type: ignore[attr-defined]

    def begin_attempt(self, job_id: str, trainer_address: str) -> tuple[int, str]:
        """The dispatch attempt to send to `trainer_address`: the current one again when it went to the same
        trainer (StartTraining is idempotent per job there: a run it started is that attempt's), else a new one,
        which supersedes the current. Returns the attempt and the trainer of the superseded attempt ("" if none),
        whose run, if it started one, must be cancelled."""
        with self.write_lock(), self._sessions.begin() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id).with_for_update())
            if job is None:
                raise NotFoundError(f"job {quote(job_id)} does not exist")
            if job.dispatch_attempt and job.dispatch_attempt_address == trainer_address:
                return job.dispatch_attempt, ""
            superseded = job.dispatch_attempt_address
            job.dispatch_attempt += 1
            job.dispatch_attempt_address = trainer_address
            return job.dispatch_attempt, superseded

    def current_attempt(self, job_id: str) -> int:
        """The job's current dispatch attempt (0 before the first)."""
        with self.engine.connect() as conn:
            attempt = conn.execute(select(Job.dispatch_attempt).where(Job.job_id == job_id)).scalar()
        if attempt is None:
            raise NotFoundError(f"job {quote(job_id)} does not exist")
        return int(attempt)

    def ended_at(self, job_id: str) -> dt.datetime | None:
        """When the job reached its final status; None while it has not (or when there is no such job)."""
        with self.engine.connect() as conn:
            return conn.execute(select(Job.ended_at).where(Job.job_id == job_id)).scalar()

    def note_reporter_contact(self, job_pk: int) -> None:
        """Records that a telemetry call of the job's reporter arrived now, for a live job that no trainer runs (the
        reporter lease, `reporter_lease`); any other job is left as it is."""
        with self.write_lock(), self.engine.begin() as conn:
            conn.execute(
                update(Job)
                .where(
                    Job.id == job_pk,
                    Job.trainer_address == "",
                    Job.status.in_([statemachine.PENDING, statemachine.RUNNING]),
                )
                .values(reporter_seen_at=utcnow())
            )

    def silent_reporters(self, before: dt.datetime) -> list[tuple[str, dt.datetime]]:
        """RUNNING jobs that no trainer runs whose reporter was last heard from (or, never heard from, which started)
        before `before`, with that time."""
        last = func.coalesce(Job.reporter_seen_at, Job.started_at, Job.updated_at)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Job.job_id, last).where(
                    Job.status == statemachine.RUNNING, Job.trainer_address == "", last < before
                )
            ).all()
        return [(job_id, seen) for job_id, seen in rows]

    def release_dispatch(self, job_id: str, *, reasons: str, busy_at: dt.datetime | None = None) -> None:
        """Gives up this backend's claim on a job no trainer accepted, keeping why for the timeout's message, and
        `busy_at` (when given) as when a trainer last answered busy (the dispatch timeout counts from then)."""
        values: dict[str, Any] = {"dispatch_claimed_until": None, "dispatch_reasons": reasons}
        if busy_at is not None:
            values["dispatch_busy_at"] = busy_at
        with self.write_lock(), self._sessions.begin() as session:
            session.execute(
                update(Job).where(Job.job_id == job_id).values(**values).execution_options(synchronize_session=False)
            )

    def set_dispatch(self, job_id: str, *, attempt: int, trainer_address: str, trainer_run_id: str) -> str | None:
        """Records which trainer runs the job and returns the job's status, read under the same row lock as
        every transition: a job cancelled while its trainer was accepting it is seen CANCELLED here, and the
        caller must cancel the run. Only while `attempt` is still the job's current dispatch attempt: a late
        answer to a superseded attempt (another backend took the job over and sent it elsewhere) writes nothing
        and returns None."""
        with self.write_lock(), self._sessions.begin() as session:
            job = session.scalar(select(Job).where(Job.job_id == job_id).with_for_update())
            if job is None:
                raise NotFoundError(f"job {quote(job_id)} does not exist")
            if job.dispatch_attempt != attempt:
                return None
            job.trainer_address = trainer_address
            job.trainer_run_id = trainer_run_id
            job.dispatch_claimed_until = None
            job.updated_at = utcnow()
            return job.status

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
                raise NotFoundError(f"job {quote(job_id)} does not exist")
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
        """The committed (metric, log) sequences of a job. Every trainer asks it once a second while watched (every
        10 s while not), so it is a plain query on a pooled connection, without an ORM session."""
        with self.engine.connect() as conn:
            cursors: dict[str, int] = dict(conn.execute(self._cursor_query, {"job_pk": job_pk}).all())
        return cursors.get(METRICS_STREAM, 0), cursors.get(LOGS_STREAM, 0)

    def metrics_after(
        self,
        job_pk: int,
        after: int,
        limit: int,
        keys: Sequence[str] = (),
        within: Sequence[tuple[int, int]] = (),
    ) -> list[tuple[int, str, float | None, int | None, int | None, float]]:
        """Up to `limit` points with sequence > `after` (and, when `within` is given, inside one of its inclusive
        ranges), in sequence order: (sequence, key, value, step, epoch, wall_time)."""
        query = (
            select(Metric.sequence, Metric.key, Metric.value, Metric.step, Metric.epoch, Metric.wall_time)
            .where(Metric.job_pk == job_pk, Metric.sequence > after)
            .order_by(Metric.sequence)
            .limit(limit)
        )
        if keys:
            query = query.where(Metric.key.in_(list(keys)))
        if within:
            query = query.where(or_(*(Metric.sequence.between(low, high) for low, high in within)))
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]  # type: ignore[misc]

    def metric_series(
        self,
        job_pk: int,
        keys: Sequence[str],
        max_points: int,
        min_step: int | None = None,
        max_step: int | None = None,
        max_bytes: int | None = None,
        *,
        start_key: str = "",
        max_keys: int | None = None,
    ) -> tuple[dict[str, list[SeriesBucket]], int, str]:
        """The job's metric series bucketed by step in the database (GetMetricSeries), the metric cursor the
        answer includes, and the first key left out ("" when none is).

        Only the first `max_keys` keys (all when None) at or after `start_key` in key order (code point order: the
        database compares and sorts keys by their bytes) with a point in the step range are read: the keys' ranges
        are read with a LIMIT, so however many keys the job has, no more than `max_keys` + 1 come to this process
        and the statement has a bound number of parameters.

        Each key's points with a step in [min_step, max_step] (points without a step are left out) go into at most
        `max_points` buckets of equal step width over the key's lowest to highest step there (fewer, the same number
        for every key, when the answer would otherwise need more than `max_bytes` on the wire), one step wide for a
        key with at most that many points there (`_bucket_width`). Min and max leave
        NaN out (NaN when every value of the bucket is); the last value is the one of the bucket's highest
        sequence. Two scans of the job's primary-key range (the keys' step ranges, then the buckets), both limited
        to the committed cursor read first, so the answer holds exactly the points up to it (bar a point filling a
        gap below it later) whatever is committed meanwhile. Keys in key order, buckets in step order.
        """
        low = 0 if min_step is None else min_step
        high = limits.MAX_STEP if max_step is None else max_step
        params: dict[str, Any] = {"job_pk": job_pk, "low": low, "high": high}
        key_filter = ""
        if keys:
            names = {f"k{i}": key for i, key in enumerate(keys)}
            params.update(names)
            key_filter = " AND key IN (" + ", ".join(f":{name}" for name in names) + ")"
        # Byte order on PostgreSQL too (its database's collation may sort otherwise): the same order as Python's
        # sort and SQLite's, so that a page's next key continues where it stopped.
        collate = "" if self.is_sqlite else ' COLLATE "C"'
        if start_key:
            params["start_key"] = start_key
            key_filter += f" AND key{collate} >= :start_key"
        limit = ""
        if max_keys is not None:
            params["max_keys"] = max_keys + 1  # one more: whether a next key exists
            limit = f" ORDER BY key{collate} LIMIT :max_keys"
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                # PostgreSQL cannot estimate the number of buckets (it guesses a fifth of the points): its JIT would
                # then spend longer compiling the statement than running it, and its sort would spill to disk.
                conn.execute(text("SET LOCAL jit = off"))
                conn.execute(text("SET LOCAL work_mem = '64MB'"))
            cursor = conn.execute(
                text("SELECT last_sequence FROM ingest_cursors WHERE job_pk = :job_pk AND stream = :stream"),
                {"job_pk": job_pk, "stream": METRICS_STREAM},
            ).scalar()
            params["cursor"] = int(cursor or 0)
            # One key needs no GROUP BY, which would sort the key's points (SQLite groups by sorting).
            selected, grouped = ("NULL", "") if len(keys) == 1 else ("key", " GROUP BY key")
            if len(keys) == 1:
                limit = ""  # no key column to order by: one row
            ranges = [
                (keys[0] if len(keys) == 1 else key, int(first), int(last), int(points))
                for key, first, last, points in conn.execute(
                    text(
                        f"SELECT {selected}, min(step), max(step), count(*) FROM metrics WHERE job_pk = :job_pk "
                        f"AND sequence <= :cursor AND step BETWEEN :low AND :high{key_filter}{grouped}{limit}"
                    ),
                    params,
                )
                if first is not None
            ]
            if not ranges:
                return {}, params["cursor"], ""
            ranges.sort()  # key order (PostgreSQL groups by hashing: any order)
            next_key = ""
            if max_keys is not None and len(ranges) > max_keys:
                next_key = ranges[max_keys][0]
                del ranges[max_keys:]
            if max_bytes is not None:
                room = max_bytes - sum(len(key.encode()) + SERIES_KEY_BYTES for key, _, _, _ in ranges)
                max_points = max(1, min(max_points, room // (SERIES_BUCKET_BYTES * len(ranges))))
            value = "m.value" if self.is_sqlite else "NULLIF(m.value, CAST('NaN' AS DOUBLE PRECISION))"
            # The ranges' numbers are integers read from the database, written into the statement as literals (so
            # that PostgreSQL divides integers, whatever type a driver would give a bound parameter).
            if len(ranges) == 1:
                # One key (the usual chart): its range is in the WHERE clause, the bucket a plain expression.
                key, first, last, points = ranges[0]
                params["key"] = key
                query = _SERIES_BUCKETS.format(
                    idx="0",
                    bucket=f"(m.step - {first}) / {_bucket_width(first, last, points, max_points)}",
                    group="bucket",
                    value=value,
                    ranges="",
                    step_range=f"m.key = :key AND m.step BETWEEN {first} AND {last}",
                )
            else:
                # Several keys: their ranges joined by key; one integer group number per (key, bucket).
                rows = [
                    (key, index, first, last, _bucket_width(first, last, points, max_points))
                    for index, (key, first, last, points) in enumerate(ranges)
                ]
                if self.is_sqlite:
                    # A temporary table with a primary key (this connection's, rolled back with its read): SQLite
                    # scans a VALUES list for every row, which costs as many comparisons per point as keys.
                    conn.execute(text(_SERIES_RANGES_TABLE))
                    conn.execute(text("DELETE FROM temp.series_ranges"))
                    conn.execute(
                        text("INSERT INTO temp.series_ranges VALUES (:key, :idx, :lo, :hi, :width)"),
                        [dict(zip(("key", "idx", "lo", "hi", "width"), row, strict=True)) for row in rows],
                    )
                    table = "CROSS JOIN temp.series_ranges AS r"  # CROSS: the metrics outside, the ranges inside
                else:
                    values = []
                    for key, index, first, last, width in rows:
                        params[f"rk{index}"] = key
                        values.append(f"(:rk{index}, {index}, {first}, {last}, {width})")
                    table = f"JOIN (VALUES {', '.join(values)}) AS r(key, idx, lo, hi, width)"
                if all((last - first) // width < _SERIES_GROUPS_PER_KEY for _, _, first, last, width in rows):
                    # 64-bit: a PostgreSQL VALUES column of small literals is a 32-bit integer (2,048 keys overflow).
                    idx, bucket = (
                        "min(r.idx)",
                        f"CAST(r.idx AS BIGINT) * {_SERIES_GROUPS_PER_KEY} + (m.step - r.lo) / r.width",
                    )
                    group = "bucket"
                else:
                    # A key of few points has a bucket per step, whatever its step range: its bucket numbers may not
                    # fit beside the key's index in one integer, so the groups are (key, bucket).
                    idx, bucket, group = "r.idx", "(m.step - r.lo) / r.width", "r.idx, bucket"
                query = _SERIES_BUCKETS.format(
                    idx=idx,
                    bucket=bucket,
                    group=group,
                    value=value,
                    ranges=f"{table} ON m.key = r.key",
                    step_range="m.step BETWEEN r.lo AND r.hi",
                )
            series: dict[str, list[SeriesBucket]] = {}
            found = conn.execute(text(query), params).all()
            for idx, first, last, vmin, vmax, count, nans, e0, e1, last_value in found:
                series.setdefault(ranges[idx][0], []).append(
                    SeriesBucket(
                        first,
                        last,
                        nan_from_null(vmin),
                        nan_from_null(vmax),
                        nan_from_null(last_value),
                        count,
                        e0,
                        e1,
                        nans,
                    )
                )
        return series, params["cursor"], next_key

    def logs_after(
        self, job_pk: int, after: int, limit: int, min_level: int = 0, within: Sequence[tuple[int, int]] = ()
    ) -> list[LogRecord]:
        """Up to `limit` log records with sequence > `after` (and, when `within` is given, inside one of its
        inclusive ranges), in sequence order."""
        query = (
            select(LogRecord)
            .where(LogRecord.job_pk == job_pk, LogRecord.sequence > after)
            .order_by(LogRecord.sequence)
            .limit(limit)
        )
        if min_level:
            query = query.where(LogRecord.level >= min_level)
        if within:
            query = query.where(or_(*(LogRecord.sequence.between(low, high) for low, high in within)))
        with self._sessions() as session:
            return list(session.scalars(query))

    def status_events_after(self, job_pk: int, after: int) -> list[StatusEvent]:
        """Status events with sequence > `after`, oldest first."""
        return self.status_and_events_after(job_pk, after)[1]

    def status_and_events_after(self, job_pk: int, after: int) -> tuple[str, list[StatusEvent]]:
        """The job's current status and its status events with sequence > `after` (oldest first), read together:
        a terminal status comes with its event unless `after` is past it."""
        with self._sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_pk))
            if status is None:
                raise NotFoundError("job does not exist")
            events = list(
                session.scalars(
                    select(StatusEvent)
                    .where(StatusEvent.job_pk == job_pk, StatusEvent.sequence > after)
                    .order_by(StatusEvent.sequence)
                )
            )
            return status, events

    def epoch_summaries_after(self, job_pk: int, after_epoch: int, limit: int = 1000) -> list[SummaryView]:
        """Up to `limit` epoch summaries with `after_epoch` < epoch <= `limits.MAX_EPOCH` (use -1 for all), in
        epoch order. Rows above MAX_EPOCH (stored before ingest refused them) are left out: no cursor could
        count past them."""
        with self._sessions() as session:
            summaries = list(
                session.scalars(
                    select(EpochSummary)
                    .where(
                        EpochSummary.job_pk == job_pk,
                        EpochSummary.epoch > after_epoch,
                        EpochSummary.epoch <= limits.MAX_EPOCH,
                    )
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
