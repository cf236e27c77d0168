"""The dashboard's Prometheus metrics, served on `/metrics` of their own port when `TP_METRICS_PORT` is set.

Most are read at scrape time from what the fan-out and the jobs feed already count for /healthz, so nothing is
counted twice; only the events sent to browsers are counted where they are queued (`fanout.Client.offer`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from trainingplatform_sdk import setting_values as values

if TYPE_CHECKING:
    from trainingplatform_dashboard.app import Dashboard

__all__ = ["EVENTS_SENT", "count_events_sent", "serve_metrics"]

_LOG = logging.getLogger("trainingplatform_dashboard")

EVENTS_SENT = Counter(
    "tp_dashboard_events_sent",
    "Server-Sent Events queued to browsers' job streams, by kind (metrics, logs, status, epoch_summary, ...).",
    ["kind"],
)
# The counter's child of each kind, looked up once: `labels()` takes a lock and builds a key, about 1 µs, and events
# are counted per browser tab.
_EVENTS_SENT_BY_KIND: dict[str, Counter] = {}


def count_events_sent(kind: str, count: int = 1) -> None:
    """Counts `count` events of `kind` queued to browsers (`tp_dashboard_events_sent_total`)."""
    child = _EVENTS_SENT_BY_KIND.get(kind)
    if child is None:
        child = _EVENTS_SENT_BY_KIND[kind] = EVENTS_SENT.labels(kind)
    child.inc(count)


class DashboardCollector(Collector):
    """The fan-out's and the jobs feed's own counts, read when scraped."""

    def __init__(self, dashboard: Dashboard) -> None:
        self._dashboard = dashboard

    def collect(self) -> Iterator[Metric]:
        fanout, feed = self._dashboard.fanout, self._dashboard.feed
        if fanout is None or feed is None:  # before the app started
            return
        counters = fanout.counters
        clients = GaugeMetricFamily(
            "tp_dashboard_sse_clients",
            "Browser event streams open now: job streams (stream=job) and the jobs list (stream=jobs).",
            labels=["stream"],
        )
        clients.add_metric(["job"], len(fanout.clients))
        clients.add_metric(["jobs"], len(feed.clients))
        yield clients
        yield CounterMetricFamily(
            "tp_dashboard_sse_clients_connected",
            "Browser job event streams opened since the start.",
            value=counters.clients_total,
        )
        yield CounterMetricFamily(
            "tp_dashboard_slow_clients_dropped",
            "Browser event streams dropped because they fell TP_DASHBOARD_CLIENT_QUEUE events behind (they resume).",
            value=counters.slow_clients_dropped_total,
        )
        yield GaugeMetricFamily(
            "tp_dashboard_backend_subscriptions",
            "SubscribeTelemetry calls to the backend open now, one per watched job.",
            value=fanout.open_subscriptions,
        )
        opened = CounterMetricFamily(
            "tp_dashboard_backend_subscriptions_opened",
            "SubscribeTelemetry calls opened: a watched job's shared one (kind=job, resubscriptions included) or a "
            "single browser's catch-up (kind=catchup).",
            labels=["kind"],
        )
        opened.add_metric(["job"], counters.hub_subscriptions_total)
        opened.add_metric(["catchup"], counters.catchup_subscriptions_total)
        yield opened
        yield CounterMetricFamily(
            "tp_dashboard_backend_events_received",
            "Responses received on the shared backend subscriptions.",
            value=counters.events_received_total,
        )
        yield CounterMetricFamily(
            "tp_dashboard_jobs_polls", "ListJobs polls of the jobs list feed.", value=feed.polls_total
        )


def serve_metrics(dashboard: Dashboard, port: int, host: str) -> None:
    """Serves `/metrics` on `host:port` from a daemon thread, with the dashboard's counts. Call once per process.

    Raises:
        OSError: the port cannot be bound.
    """
    REGISTRY.register(DashboardCollector(dashboard))
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        raise values.port_error("serve metrics", host, port, "TP_METRICS_PORT", error) from None
    _LOG.info("metrics on http://%s:%d/metrics", host, port)
