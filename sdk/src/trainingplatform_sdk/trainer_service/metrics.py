"""The trainer service's Prometheus metrics, served on `/metrics` when `TP_METRICS_PORT` is set.

Every metric carries the service's framework as a label, so one dashboard shows every trainer. The trainer keeps
no queue (a StartTraining past TP_MAX_CONCURRENT_JOBS is refused and the backend retries), so what stands for
one is the slots (`tp_trainer_max_concurrent_jobs` against `tp_trainer_running_trainings`), the starts refused
because they were full, and the ended runs whose telemetry and final status are still being delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, start_http_server

from trainingplatform_sdk import setting_values as values

__all__ = ["serve_metrics", "watch"]

_log = logging.getLogger("trainingplatform_sdk.trainer_service")

RUNNING = Gauge("tp_trainer_running_trainings", "Training processes running now.", ["framework"])
MAX_CONCURRENT = Gauge(
    "tp_trainer_max_concurrent_jobs",
    "Training processes this trainer runs at most (TP_MAX_CONCURRENT_JOBS).",
    ["framework"],
)
PENDING_REPORTS = Gauge(
    "tp_trainer_pending_reports",
    "Ended runs whose spool and final status are still being delivered to the backend.",
    ["framework"],
)
STARTED = Counter("tp_trainer_trainings_started", "Training processes started.", ["framework"])
ENDED = Counter(
    "tp_trainer_trainings_ended",
    "Training processes ended, by final state: succeeded, failed or cancelled.",
    ["framework", "state"],
)
REFUSED_STARTS = Counter(
    "tp_trainer_refused_starts",
    "StartTraining calls refused because every slot was taken (RESOURCE_EXHAUSTED; the backend tries again).",
    ["framework"],
)


def watch(framework: str, max_concurrent: int, running: Callable[[], int], pending_reports: Callable[[], int]) -> None:
    """Reads the gauges from the supervisor when scraped: `running()` and `pending_reports()` count its runs."""
    MAX_CONCURRENT.labels(framework).set(max_concurrent)
    RUNNING.labels(framework).set_function(running)
    PENDING_REPORTS.labels(framework).set_function(pending_reports)


def serve_metrics(port: int, host: str) -> None:
    """Serves `/metrics` on `host:port` from a daemon thread.

    Raises:
        OSError: the port cannot be bound.
    """
    try:
        start_http_server(port, addr=host.strip("[]"))
    except OSError as error:
        raise values.port_error("serve metrics", host, port, "TP_METRICS_PORT", error) from None
    _log.info("metrics on http://%s:%d/metrics", host, port)
