"""Metadata-token authentication and the authorization rules of every RPC.

Four kinds of token travel as `authorization: Bearer <token>` (read by `trainingplatform_sdk.server.metadata`):
- the internal service token (INTERNAL_AUTH_TOKEN): every RPC; the only token trainer services accept, so only
  the backend (and operators' tools holding it) can start training;
- the front-end token (FRONTEND_AUTH_TOKEN, generated into `<data_dir>/frontend_auth_token` when unset): every
  JobsService RPC (create, cancel, read, subscribe), no telemetry;
- the read token (READ_AUTH_TOKEN, optional): the read RPCs of JobsService;
- a job's telemetry token, `<job_id>.<secret>`: that job's telemetry and reads of that job only; the token a
  dispatch attempt hands to a trainer, `<job_id>.<attempt>.<secret>`, is scoped to that attempt (a superseded
  attempt's telemetry is refused: `Backend.check_attempt`). Once the job has ended, a job token writes for
  `TP_JOB_TOKEN_GRACE_S` more (a spool replay), then only reads (`JobTokenWindow`).
Job tokens are stored as SHA-256 hashes and every comparison is constant-time. No token is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime as dt
import enum
import hashlib
import hmac
import math
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from trainingplatform_sdk.errors import PermissionDeniedError, UnauthenticatedError


class Kind(enum.Enum):
    """Who a caller is."""

    INTERNAL = "internal"
    FRONTEND = "front-end"
    READ = "read"
    JOB = "job"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller; `job_id` is set for a job's telemetry token, `attempt` for a dispatch attempt's
    token (0: the token CreateJob returned)."""

    kind: Kind
    job_id: str = ""
    attempt: int = 0


_TELEMETRY = "/trainingplatform.telemetry.v1.TrainingTelemetryService/"
_JOBS = "/trainingplatform.jobs.v1.JobsService/"
_JOB_SCOPED_READ = frozenset({Kind.INTERNAL, Kind.FRONTEND, Kind.READ, Kind.JOB})

# Which kinds of caller may call each method. A method missing here is refused (deny by default).
METHOD_RIGHTS: dict[str, frozenset[Kind]] = {
    **{
        _TELEMETRY + name: frozenset({Kind.INTERNAL, Kind.JOB})
        for name in (
            "StreamMetrics",
            "StreamLogs",
            "UpdateStatus",
            "RecordEpochSummary",
            "ReportRunInfo",
            "GetStreamCursor",
        )
    },
    _JOBS + "CreateJob": frozenset({Kind.INTERNAL, Kind.FRONTEND}),
    _JOBS + "CancelJob": frozenset({Kind.INTERNAL, Kind.FRONTEND}),
    _JOBS + "ListJobs": frozenset({Kind.INTERNAL, Kind.FRONTEND, Kind.READ}),
    _JOBS + "ListFrameworks": frozenset({Kind.INTERNAL, Kind.FRONTEND, Kind.READ}),
    _JOBS + "GetJob": _JOB_SCOPED_READ,
    _JOBS + "ListMetrics": _JOB_SCOPED_READ,
    _JOBS + "GetMetricSeries": _JOB_SCOPED_READ,
    _JOBS + "ListLogs": _JOB_SCOPED_READ,
    _JOBS + "SubscribeTelemetry": _JOB_SCOPED_READ,
}

CALLER: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")
"""The authenticated caller of the RPC being served (set by the interceptor)."""


def hash_token(token: str) -> str:
    """The stored form of a token: SHA-256 hex (tokens are random, so no salt or slow hash is needed)."""
    return hashlib.sha256(token.encode()).hexdigest()


def mint_job_token(job_id: str) -> tuple[str, str]:
    """A new telemetry token for `job_id` and its hash."""
    token = f"{job_id}.{secrets.token_urlsafe(32)}"
    return token, hash_token(token)


def derive_job_token(key: str, job_id: str, attempt: int = 0) -> tuple[str, str]:
    """The telemetry token of `job_id` derived from the internal service token (`key`) and its hash; with an
    `attempt` (>= 1), the token of that dispatch attempt, `<job_id>.<attempt>.<secret>`.

    The backend can derive it again: to return the job's token to a CreateJob retry, and to check an attempt's
    token without storing it. Only the job token's hash is stored; deriving needs the internal token, whose
    holder has every right anyway.
    """
    message = f"tp-job-token:{job_id}" + (f":{attempt}" if attempt else "")
    secret = base64.urlsafe_b64encode(hmac.new(key.encode(), message.encode(), hashlib.sha256).digest())
    token = f"{job_id}.{f'{attempt}.' if attempt else ''}{secret.rstrip(b'=').decode()}"
    return token, hash_token(token)


def authorize_job(job_id: str) -> None:
    """Checks that the caller may act on `job_id`: a telemetry token only covers its own job.

    Raises:
        PermissionDeniedError: a telemetry token of another job.
    """
    principal = CALLER.get()
    if principal.kind is Kind.JOB and principal.job_id != job_id:
        raise PermissionDeniedError("this telemetry token belongs to another job")


#: How long a job id no job has is answered missing without a database query (`Authenticator`): a client repeating
#: a token of a job that does not exist costs one query per this time, not one per call. A job created meanwhile
#: can only be one whose id the token's sender knew before it existed (CreateJob draws ids at random), so its token
#: is refused at most this long.
MISSING_JOB_TTL_S = 5.0


class Authenticator:
    """Turns the bearer token of a call into a Principal."""

    def __init__(
        self,
        *,
        internal_token: str,
        read_token: str,
        job_token_hash: Callable[[str], str | None],
        frontend_token: str = "",
        cache_size: int = 10_000,
        missing_ttl_s: float = MISSING_JOB_TTL_S,
    ) -> None:
        """Args:
        internal_token: the service token (required, non-empty).
        read_token: the read-only token, or empty for none.
        frontend_token: the front ends' token, or empty for none.
        job_token_hash: looks up the stored hash of a job's token (blocking; run in a thread), None if no job.
        cache_size: how many job token hashes, and how many job ids found missing, to keep in memory; hashes never
            change.
        missing_ttl_s: how long a job id found missing is answered missing without asking the database again.
        """
        if not internal_token:
            raise ValueError("the internal service token must not be empty")
        self._internal = internal_token.encode()
        self._read = read_token.encode() if read_token else b""
        self._frontend = frontend_token.encode() if frontend_token else b""
        self._lookup = job_token_hash
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self._missing: OrderedDict[str, float] = OrderedDict()  # job id -> when it was found missing (monotonic)
        self._missing_ttl_s = missing_ttl_s

    async def authenticate(self, token: str) -> Principal:
        """Returns the caller presenting `token` (the bearer token, without surrounding white space).

        Raises:
            UnauthenticatedError: a token the server does not know.
        """
        raw = token.encode()
        if hmac.compare_digest(raw, self._internal):
            return Principal(Kind.INTERNAL)
        if self._frontend and hmac.compare_digest(raw, self._frontend):
            return Principal(Kind.FRONTEND)
        if self._read and hmac.compare_digest(raw, self._read):
            return Principal(Kind.READ)
        job_id, dot, rest = token.partition(".")
        attempt, attempt_dot, _ = rest.partition(".")
        if dot and attempt_dot and attempt.isdecimal() and 0 < len(attempt) <= 9 and _is_uuid(job_id):
            expected, _ = derive_job_token(self._internal.decode(), job_id, int(attempt))
            if hmac.compare_digest(raw, expected.encode()):
                return Principal(Kind.JOB, job_id, int(attempt))
            raise UnauthenticatedError("unknown token")
        if dot and _is_uuid(job_id):
            stored = await self._job_hash(job_id)
            if stored is not None and hmac.compare_digest(hash_token(token), stored):
                return Principal(Kind.JOB, job_id)
        raise UnauthenticatedError("unknown token")

    async def _job_hash(self, job_id: str) -> str | None:
        cached = self._cache.get(job_id)
        if cached is not None:
            self._cache.move_to_end(job_id)
            return cached
        missing_at = self._missing.get(job_id)
        if missing_at is not None and time.monotonic() - missing_at < self._missing_ttl_s:
            return None
        stored = await asyncio.to_thread(self._lookup, job_id)
        if stored is not None:
            self._missing.pop(job_id, None)
            self._cache[job_id] = stored
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._missing[job_id] = time.monotonic()
            self._missing.move_to_end(job_id)
            if len(self._missing) > self._cache_size:
                self._missing.popitem(last=False)
        return stored


_UNREAD: tuple[float | None, float] = (None, -math.inf)


class JobTokenWindow:
    """Stops a job's tokens (the job's own and every attempt's) writing `grace_s` after the job ended.

    A job's end time never changes once set, so it is kept in memory for good. A job not ended when last read
    cannot stop writing before that read plus `grace_s`, so it is read again only then (at least `refresh_s`
    apart): a stream's messages cost no database query.
    """

    def __init__(
        self,
        grace_s: float,
        ended_at: Callable[[str], dt.datetime | None],
        *,
        refresh_s: float = 1.0,
        cache_size: int = 100_000,
    ) -> None:
        """Args:
        grace_s: how long after its job ended a job token may still write (TP_JOB_TOKEN_GRACE_S).
        ended_at: reads when a job ended, None while it runs (blocking; run in a thread).
        refresh_s: the least time between two reads of a running job's end time.
        cache_size: how many jobs to remember.
        """
        self.grace_s = grace_s
        self._lookup = ended_at
        self._refresh_s = refresh_s
        self._cache_size = cache_size
        # job id -> (end time as a POSIX timestamp or None while running, when it was read).
        self._ended: dict[str, tuple[float | None, float]] = {}

    async def check_write(self, job_id: str, principal: Principal | None = None) -> None:
        """Refuses a job token's write to `job_id` once its job ended more than `grace_s` ago; any other caller
        passes.

        Raises:
            PermissionDeniedError: naming the job, when it ended and when its token stopped writing.
        """
        principal = principal or CALLER.get()
        if self.check_write_now(job_id, principal):
            return
        now = time.time()
        value = await asyncio.to_thread(self._lookup, job_id)
        ended = value.timestamp() if value is not None else None
        if len(self._ended) >= self._cache_size:
            self._ended.clear()
        self._ended[job_id] = (ended, now)
        self._refuse_after_end(job_id, ended, now)

    def check_write_now(self, job_id: str, principal: Principal) -> bool:
        """`check_write` from memory alone, for every message of a stream: True when the caller may write, False
        when the job's end time must be read first (then await `check_write`).

        Raises:
            PermissionDeniedError: as `check_write`, when memory already tells.
        """
        if principal.kind is not Kind.JOB:
            return True
        now = time.time()
        ended, read_at = self._ended.get(job_id, _UNREAD)
        if ended is None and now - read_at >= max(self.grace_s, self._refresh_s):
            return False
        self._refuse_after_end(job_id, ended, now)
        return True

    def _refuse_after_end(self, job_id: str, ended: float | None, now: float) -> None:
        if ended is not None and now >= ended + self.grace_s:
            at = dt.datetime.fromtimestamp(ended, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            raise PermissionDeniedError(
                f"job {job_id} ended at {at}; its token stopped writing {self.grace_s:g} s later"
            )


def check_method(method: str, principal: Principal) -> None:
    """Checks that `principal` may call `method` at all.

    Raises:
        PermissionDeniedError: the token's kind has no right to this method.
    """
    allowed = METHOD_RIGHTS.get(method, frozenset())
    if principal.kind not in allowed:
        raise PermissionDeniedError(f"a {principal.kind.value} token may not call {method.rsplit('/', 1)[-1]}")


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
