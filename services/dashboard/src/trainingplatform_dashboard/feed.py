"""The jobs feed: one poll a second for every open jobs page together, pushed as `event: job`.

While at least one browser follows /api/events/jobs, the feed polls every `poll_interval_s`: the jobs not ended
(pending, queued, running: ListJobs with a status filter, paged, however old they are; at most `MAX_UNENDED_JOBS`,
the newest, with a warning logged when there are more) and the newest `NEWEST_JOBS` (500) jobs. A job the last
poll saw not ended that is in neither list any more has ended: it is read once (GetJob, at most 100 a poll) and
its final status is pushed. The feed sends each job that appeared or changed (status, times, name, latest metric)
to every follower. A follower first receives every job of the last poll (one that came before a poll found any
job: every job of the next one) at once, as one event of its `max_events` however many jobs there are: a page that
reconnects is whole again, and none is dropped as slow for the jobs it opens with.

While ListJobs fails, the followers keep the jobs of the last good poll and receive `event: backend`
{"reachable": false, "since": ISO time, "message"} (a new follower first), then {"reachable": true} once a poll
succeeds again: the page says that what it shows is stale.

The latest metric of a job (the jobs page's "latest key metric") comes from GetMetricSeries with one bucket per
key, every key (the backend answers 1,000 keys a call: the feed follows `next_key`); it is read again only when
the job's metric cursor moved, at most every `LATEST_REFRESH_S` per job, and never again once the job has ended
(unless it left the cache, which keeps those of the `MAX_LATEST_CACHED` jobs read last).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2

from trainingplatform_dashboard import convert, metrics
from trainingplatform_dashboard.backend import Backend
from trainingplatform_dashboard.fanout import Client, Cursor

__all__ = ["MAX_LATEST_CACHED", "MAX_UNENDED_JOBS", "NEWEST_JOBS", "JobsFeed", "pick_key_metric"]

_LOG = logging.getLogger("trainingplatform_dashboard.feed")

LATEST_REFRESH_S = 5.0
"""A running job's latest metric is read at most this often."""
_LATEST_CONCURRENCY = 8
_LATEST_PER_ROUND = 50
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
NEWEST_JOBS = 500
"""Every poll reads the newest this many jobs, whatever their status."""
MAX_UNENDED_JOBS = 5000
"""Every poll also reads the jobs not ended (pending, queued, running), at most this many (the newest; a warning is
logged when there are more): 5 ListJobs pages of 1,000."""
_NOT_ENDED = (common_pb2.JOB_STATUS_PENDING, common_pb2.JOB_STATUS_QUEUED, common_pb2.JOB_STATUS_RUNNING)
_LEFT_READS_PER_POLL = 100
MAX_LATEST_CACHED = 20_000
"""The latest key metrics kept: those of the jobs read last (a poll's jobs, at most `MAX_UNENDED_JOBS` +
`NEWEST_JOBS`, fit several times); one dropped is read again when its job is shown again."""
_PREFERRED = (
    "val/accuracy",
    "val/acc",
    "val/top1",
    "val/acc1",
    "metrics/mAP50-95(B)",
    "metrics/mAP50(B)",
)


def pick_key_metric(keys: Iterable[str]) -> str | None:
    """The key a jobs list shows: a validation accuracy or mAP when the job has one, else another validation
    metric, else the training loss, else another training metric, else the first key that is not a system metric."""
    names = sorted(key for key in keys if not key.startswith("system/"))
    for preferred in _PREFERRED:
        if preferred in names:
            return preferred
    validation = [key for key in names if key.startswith("val/")]
    if validation:
        return validation[0]
    if "train/loss" in names:
        return "train/loss"
    training = [key for key in names if key.startswith("train/")]
    candidates = training or names
    return candidates[0] if candidates else None


@dataclass
class _Latest:
    metric_sequence: int
    read_at: float
    value: dict[str, Any] | None


class JobsFeed:
    """The shared ListJobs poller and its followers."""

    def __init__(
        self,
        backend: Backend,
        *,
        poll_interval_s: float,
        linger_s: float,
        max_events: int,
        max_unended: int = MAX_UNENDED_JOBS,
        max_latest: int = MAX_LATEST_CACHED,
    ) -> None:
        self.backend = backend
        self.max_latest = max_latest
        """The most jobs whose latest key metric is kept (those read last)."""
        self.max_unended = max_unended
        """The most jobs not ended that a poll reads (the newest of them)."""
        self.unended_cut = False
        """Whether the last poll found more jobs not ended than `max_unended`."""
        self._unended: set[str] = set()
        """Jobs whose last status seen was not terminal: one that leaves both lists is read once (GetJob)."""
        self.poll_interval_s = poll_interval_s
        self.linger_s = linger_s
        self.max_events = max_events
        self.clients: set[Client] = set()
        self._first: set[Client] = set()
        """Followers that came before the feed knew any job: the next poll's jobs are their first, sent at once."""
        self.snapshot: dict[str, str] = {}
        """Job id -> the JSON last sent (without the duration, which changes every second)."""
        self.jobs: dict[str, dict[str, Any]] = {}
        self.polls_total = 0
        self.unreachable_since: float | None = None
        """When ListJobs started failing (time.time()), None while it answers."""
        self.unreachable_message = ""
        self._latest: dict[str, _Latest] = {}
        self._task: asyncio.Task[None] | None = None
        self._idle_since: float | None = None

    # --- latest metrics ---------------------------------------------------------------------------------------

    def latest(self, job_id: str) -> dict[str, Any] | None:
        """The cached latest key metric of a job, {key, value, step} or None."""
        entry = self._latest.get(job_id)
        return entry.value if entry else None

    async def refresh_latest(self, jobs: list[jobs_pb2.Job]) -> None:
        """Reads the latest key metric of the jobs whose metric cursor moved (bounded per call); the cache keeps
        those of the `max_latest` jobs read last."""
        now = time.monotonic()
        stale: list[jobs_pb2.Job] = []
        for job in jobs:
            sequence = job.cursor.last_metric_sequence
            if sequence == 0:
                continue
            entry = self._latest.get(job.job_id)
            if entry is not None and (
                entry.metric_sequence == sequence
                or (now - entry.read_at < LATEST_REFRESH_S and convert.status_name(job.status) not in _TERMINAL)
            ):
                continue
            stale.append(job)
            if len(stale) >= _LATEST_PER_ROUND:
                break
        if not stale:
            return
        semaphore = asyncio.Semaphore(_LATEST_CONCURRENCY)

        async def read(job: jobs_pb2.Job) -> None:
            async with semaphore:
                try:
                    # Every key (the backend answers 1,000 a call): the key metric may come after the first 1,000.
                    pages = await self.backend.metric_series_pages(
                        jobs_pb2.GetMetricSeriesRequest(job_id=job.job_id, max_points=1)
                    )
                except grpc.aio.AioRpcError as error:
                    _LOG.debug("latest metric of %s: %s", job.job_id, error.code().name)
                    return
                by_key = {series.key: series for series, _ in pages.series if series.buckets}
                key = pick_key_metric(by_key)
                value = None
                if key is not None:
                    bucket = by_key[key].buckets[-1]
                    value = {"key": key, "value": convert.number(bucket.last), "step": bucket.last_step}
                self._latest.pop(job.job_id, None)  # kept in the order read: the first ones go first
                self._latest[job.job_id] = _Latest(pages.last_sequence, time.monotonic(), value)
                while len(self._latest) > self.max_latest:
                    del self._latest[next(iter(self._latest))]

        await asyncio.gather(*(read(job) for job in stale))

    def job_json(self, job: jobs_pb2.Job) -> dict[str, Any]:
        """The contract's Job with its cached latest metric."""
        return convert.job_json(job, self.latest(job.job_id))

    # --- followers --------------------------------------------------------------------------------------------

    def follow(self) -> Client:
        """A new follower: queued the last poll's jobs (as one chunk, so that they count as one event of its
        `max_events`; before the first poll, that poll's jobs, likewise), then every change."""
        client = Client(cursor=Cursor(), max_events=self.max_events)
        if self.jobs:
            client.push(b"".join(_job_chunk(job) for job in self.jobs.values()))
        else:
            self._first.add(client)
        if self.unreachable_since is not None:
            client.push(self._backend_chunk())
        client.wake.set()
        self.clients.add(client)
        self._idle_since = None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="jobs-feed")
        return client

    def unfollow(self, client: Client) -> None:
        """A follower left."""
        self.clients.discard(client)
        self._first.discard(client)
        if not self.clients:
            self._idle_since = time.monotonic()

    async def _run(self) -> None:
        try:
            while True:
                idle = self._idle_since
                if not self.clients and idle is not None and time.monotonic() - idle >= self.linger_s:
                    return
                started = time.monotonic()
                try:
                    await self.poll()
                except grpc.aio.AioRpcError as error:
                    _LOG.warning("jobs feed: ListJobs failed: %s", error.code().name)
                    self._unreachable(f"{error.code().name}: {error.details() or ''}".strip(": "))
                except Exception:
                    _LOG.exception("jobs feed: poll failed")
                else:
                    self._reachable()
                await asyncio.sleep(max(0.05, self.poll_interval_s - (time.monotonic() - started)))
        except asyncio.CancelledError:
            pass

    def _backend_chunk(self) -> bytes:
        if self.unreachable_since is None:
            data: dict[str, Any] = {"reachable": True}
        else:
            since = datetime.datetime.fromtimestamp(self.unreachable_since, datetime.UTC)
            data = {"reachable": False, "since": since.isoformat(), "message": self.unreachable_message[:300]}
        return f"event: backend\ndata: {convert.dumps(data)}\n\n".encode()

    def _unreachable(self, message: str) -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
            self.unreachable_message = message
            self._broadcast(self._backend_chunk())

    def _reachable(self) -> None:
        if self.unreachable_since is not None:
            self.unreachable_since = None
            self._broadcast(self._backend_chunk())

    def _broadcast(self, chunk: bytes) -> None:
        """Queues a chunk to every follower: one that falls `max_events` behind gets nothing more and its stream
        ends at once (`Client.push`); its page reconnects and receives every job of the last poll again."""
        for client in tuple(self.clients):
            client.push(chunk)

    async def poll(self) -> None:
        """One round: the jobs not ended (ListJobs by status, paged, at most `max_unended` of them), the newest
        `NEWEST_JOBS`, and one GetJob of each job followed as not ended that is in neither list any more; sends
        what changed to every follower."""
        unended, cut = await self.backend.list_jobs_capped(statuses=_NOT_ENDED, limit=self.max_unended)
        self._note_cut(cut)
        newest = await self.backend.list_jobs(limit=NEWEST_JOBS)
        by_id = {job.job_id: job for job in unended}
        by_id.update((job.job_id, job) for job in newest)  # read last: the newer of the two
        left = sorted(job_id for job_id in self._unended if job_id not in by_id)
        reading = left[:_LEFT_READS_PER_POLL]
        read, failed = await self._read_left(reading)
        by_id.update((job.job_id, job) for job in read)
        # Followed from now on: every job not ended in the lists (one read after it left them is not: it ended,
        # or it is past `max_unended`), and those of `left` not read yet or whose read failed.
        self._unended = {job_id for job_id, job in by_id.items() if job_id not in reading and _not_ended(job)}
        self._unended.update(left[_LEFT_READS_PER_POLL:], failed)
        jobs = list(by_id.values())
        self.polls_total += 1
        await self.refresh_latest(jobs)
        seen: dict[str, dict[str, Any]] = {}
        changed: list[bytes] = []
        for job in jobs:
            data = self.job_json(job)
            seen[job.job_id] = data
            signature = convert.dumps({**data, "duration_s": None})
            if self.snapshot.get(job.job_id) != signature:
                self.snapshot[job.job_id] = signature
                changed.append(_job_chunk(data))
        # Those that came before any job was known get this poll's jobs, their first, as one chunk (as `follow`
        # gives the last poll's): a first poll longer than their queue does not drop them as slow.
        first, self._first = self._first, set()
        for client in tuple(self.clients):
            if client in first:
                if changed:
                    client.push(b"".join(changed))
            else:
                for chunk in changed:
                    client.push(chunk)
        metrics.count_events_sent("job", len(self.clients) * len(changed))
        for gone in set(self.snapshot) - set(seen):
            del self.snapshot[gone]
        self.jobs = seen

    async def _read_left(self, job_ids: list[str]) -> tuple[list[jobs_pb2.Job], list[str]]:
        """GetJob of each job that left the lists of a poll (to push its final status): (the jobs read, the ids
        whose read failed). A job the backend no longer has is in neither."""
        semaphore = asyncio.Semaphore(_LATEST_CONCURRENCY)
        read: list[jobs_pb2.Job] = []
        failed: list[str] = []

        async def one(job_id: str) -> None:
            async with semaphore:
                try:
                    read.append((await self.backend.get_job(job_id)).job)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND:
                        _LOG.debug("jobs feed: GetJob %s: %s", job_id, error.code().name)
                        failed.append(job_id)

        await asyncio.gather(*(one(job_id) for job_id in job_ids))
        return read, failed

    def _note_cut(self, cut: bool) -> None:
        """Logs a warning when the jobs not ended first outnumber `max_unended`, and when they no longer do."""
        if cut and not self.unended_cut:
            _LOG.warning(
                "jobs feed: more than %d jobs are not ended; it follows the newest %d of them and the newest %d "
                "jobs: the status changes of the others reach an open jobs page only when it loads its list again",
                self.max_unended,
                self.max_unended,
                NEWEST_JOBS,
            )
        elif not cut and self.unended_cut:
            _LOG.info("jobs feed: at most %d jobs are not ended again: it follows all of them", self.max_unended)
        self.unended_cut = cut

    async def close(self) -> None:
        """Stops polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task


def _not_ended(job: jobs_pb2.Job) -> bool:
    return convert.status_name(job.status) not in _TERMINAL


def _job_chunk(job: dict[str, Any]) -> bytes:
    return f"event: job\ndata: {convert.dumps(job)}\n\n".encode()
