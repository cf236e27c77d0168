"""The backend's Prometheus metrics: what each one counts, and the HTTP endpoint that serves them (`/metrics`).

Every metric is declared here; the code that moves one calls it in a single line where the event happens. The
endpoint is served when `TP_METRICS_PORT` is set. With `--workers N` the worker processes share their metrics
through files in `PROMETHEUS_MULTIPROC_DIR`: the supervisor serves them all at once (`serve_metrics`), the
workers (`TP_BACKEND_WORKER=1`) never serve. Gauges therefore declare how the processes' values combine:
`livesum` for what each process holds (open streams, subscribers), `livemostrecent` for a fact of the database
that every process reads alike (jobs by status, the dispatch queue).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from trainingplatform_sdk import setting_values as values
from trainingplatform_sdk.server import StatusOf

from trainingplatform_backend import statemachine
from trainingplatform_backend.models import Job

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (to an empty directory) by the `--workers` supervisor before it starts the workers."""

WORKER_ENV = "TP_BACKEND_WORKER"
"""Set to 1 in the worker processes of `--workers N`: they record metrics but never serve them."""

JOB_STATUSES = (
    statemachine.PENDING,
    statemachine.QUEUED,
    statemachine.RUNNING,
    statemachine.COMPLETED,
    statemachine.FAILED,
    statemachine.CANCELLED,
)

JOBS_REFRESH_S = 5.0
"""How often `tp_backend_jobs` is read again from the database."""

POINTS_COMMITTED = Counter(
    "tp_backend_points_committed",
    "Telemetry points (stream=metrics) and log records (stream=logs) committed, each once.",
    ["stream"],
)
MESSAGES_COMMITTED = Counter(
    "tp_backend_messages_committed",
    "Telemetry stream messages (batches) committed.",
    ["stream"],
)
DUPLICATES = Counter(
    "tp_backend_duplicates",
    "Points and log records received again (resends after a reconnect) and ignored.",
    ["stream"],
)
REFUSED_CALLS = Counter(
    "tp_backend_refused_calls",
    "Calls answered with an error status, by gRPC code (UNAUTHENTICATED and PERMISSION_DENIED: refused by the "
    "authentication; INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...: refused by the handler).",
    ["code"],
)
COMMIT_SECONDS = Histogram(
    "tp_backend_commit_seconds",
    "Duration of one group-commit round (one transaction).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
COMMIT_ROWS = Histogram(
    "tp_backend_commit_rows",
    "Rows (points and log records) in one group-commit round.",
    buckets=(1, 4, 16, 64, 256, 1_000, 4_000, 16_000, 64_000, 100_000),
)
OPEN_STREAMS = Gauge(
    "tp_backend_open_streams",
    "Telemetry streams (StreamMetrics, StreamLogs calls) open now.",
    ["stream"],
    multiprocess_mode="livesum",
)
STREAMS_ENDED_FOR_WATCH = Counter(
    "tp_backend_streams_ended_for_watch",
    "Telemetry streams ended with OK because their job got its first live subscriber: the trainer then reads the "
    "cursor at once and sends at the watched rate.",
)
SUBSCRIBERS = Gauge(
    "tp_backend_subscribers",
    "SubscribeTelemetry calls open now.",
    multiprocess_mode="livesum",
)
SUBSCRIBER_LAGS = Counter(
    "tp_backend_subscriber_lags",
    "Times a subscriber's live buffer overflowed (TP_SUBSCRIBER_BUFFER_POINTS) and it was told it lagged.",
)
JOBS = Gauge(
    "tp_backend_jobs",
    f"Jobs in the database by status, read every {JOBS_REFRESH_S:.0f} s; status=RUNNING are the running trainings.",
    ["status"],
    multiprocess_mode="livemostrecent",
)
DISPATCH_QUEUE = Gauge(
    "tp_backend_dispatch_queue",
    "QUEUED jobs due for a dispatch and held by no backend, as the dispatcher saw them in its last round.",
    multiprocess_mode="livemostrecent",
)
DISPATCHES = Counter(
    "tp_backend_dispatches",
    "Dispatch passes by outcome: started (a trainer took the job), retried (every trainer busy or unreachable), "
    "refused (a trainer refused the job: FAILED), timed_out (no trainer within TP_DISPATCH_TIMEOUT_S: FAILED).",
    ["outcome"],
)


def multiprocess() -> bool:
    """Whether this process shares its metrics with others through `PROMETHEUS_MULTIPROC_DIR`."""
    return bool(os.environ.get(MULTIPROC_ENV))


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Serves `/metrics` on `host:port` from a daemon thread.

    With `PROMETHEUS_MULTIPROC_DIR` set it serves what every process of the backend recorded there (the
    `--workers` supervisor calls it); otherwise this process's own metrics.

    Raises:
        OSError: the port cannot be bound.
    """
    registry = REGISTRY
    if multiprocess():
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    try:
        start_http_server(port, addr=host.strip("[]"), registry=registry)
    except OSError as error:
        raise values.port_error("serve metrics", host, port, "TP_METRICS_PORT", error) from None
    log.info("metrics on http://%s:%d/metrics", host, port)


def should_serve(port: int) -> bool:
    """Whether this process serves `/metrics` itself: a port is set and it is not a worker of `--workers`."""
    return port > 0 and os.environ.get(WORKER_ENV) != "1"


def mark_process_dead(pid: int) -> None:
    """Drops an exited worker's `live*` gauges (the supervisor calls it for each worker that ends)."""
    if multiprocess():
        from prometheus_client.multiprocess import mark_process_dead as mark

        mark(pid)


_STREAMS = ("metrics", "logs")
_POINTS = {stream: POINTS_COMMITTED.labels(stream) for stream in _STREAMS}
_MESSAGES = {stream: MESSAGES_COMMITTED.labels(stream) for stream in _STREAMS}
_DUPLICATES = {stream: DUPLICATES.labels(stream) for stream in _STREAMS}


def record_round(batches: Sequence[Any], results: Sequence[Any], seconds: float) -> None:
    """Counts one committed group-commit round: `batches` (each with `.stream` and a length, its rows; one stream
    message each) and their `results` (each with `.committed` and `.duplicates`), which took `seconds`."""
    COMMIT_SECONDS.observe(seconds)
    COMMIT_ROWS.observe(sum(len(batch) for batch in batches))
    for batch, result in zip(batches, results, strict=True):
        _MESSAGES[batch.stream].inc()
        if result.committed:
            _POINTS[batch.stream].inc(result.committed)
        if result.duplicates:
            _DUPLICATES[batch.stream].inc(result.duplicates)


def counting_refusals(status_of: StatusOf) -> StatusOf:
    """`status_of` (the service's one mapping of errors to statuses) counting each status it gives in
    `tp_backend_refused_calls`: every call answered with an error, authentication refusals included, goes
    through it."""

    def counted(error: BaseException) -> tuple[grpc.StatusCode, str]:
        status = status_of(error)
        REFUSED_CALLS.labels(status[0].name).inc()
        return status

    return counted


def count_jobs(engine: Engine) -> dict[str, int]:
    """The number of jobs in each status (one indexed GROUP BY)."""
    with engine.connect() as conn:
        return {status: count for status, count in conn.execute(select(Job.status, func.count()).group_by(Job.status))}


def set_jobs(counts: Mapping[str, int], statuses: tuple[str, ...]) -> None:
    """Sets `tp_backend_jobs` to `counts` (status name to number of jobs); statuses absent from it read 0."""
    for status in statuses:
        JOBS.labels(status).set(counts.get(status, 0))


def start(port: int, host: str, engine: Engine, *, serve: bool = True) -> asyncio.Task[None] | None:
    """Turns the metrics on when `port` is set (TP_METRICS_PORT): serves them (unless this process is a worker of
    `--workers`, whose supervisor serves, or `serve` is False: the caller served them already) and starts the task
    that keeps `tp_backend_jobs` current, which the caller cancels on shutdown. None when off.

    Raises:
        OSError: the port cannot be bound.
    """
    if not port:
        return None
    if serve and should_serve(port):
        serve_metrics(port, host)
    return asyncio.create_task(refresh_jobs(lambda: count_jobs(engine), JOB_STATUSES), name="metrics-jobs")


async def refresh_jobs(read: Callable[[], Mapping[str, int]], statuses: tuple[str, ...]) -> None:
    """Keeps `tp_backend_jobs` current: reads `read()` (in a worker thread) every `JOBS_REFRESH_S`, until
    cancelled. A failed read is logged once and tried again at the next interval."""
    failing = False
    while True:
        try:
            set_jobs(await asyncio.to_thread(read), statuses)
            failing = False
        except Exception as error:  # a database hiccup must not end the refresher
            if not failing:
                log.warning("cannot read the job counts for tp_backend_jobs: %s", type(error).__name__)
            failing = True
        await asyncio.sleep(JOBS_REFRESH_S)
