"""Scraping a service's Prometheus endpoint in tests: `/metrics` read with urllib and parsed by prometheus_client.

before = scrape(port)
... run something ...
after = scrape(port)
assert after.value("tp_backend_points_committed_total", stream="metrics") - before.value(...) == 250
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Scrape:
    """One scrape: every sample by name and labels, and the metric families' names and types."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    families: dict[str, str]
    text: str

    def value(self, name: str, **labels: str) -> float:
        """The sample `name` with exactly these labels; 0 when it is absent (a labelled child not yet created)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        """Whether the sample exists."""
        return (name, frozenset(labels.items())) in self.samples


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 5) -> Scrape:
    """Reads and parses http://host:port/metrics."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    families: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Scrape(samples, families, text)


def scrape_until(port: int, condition: Callable[[Scrape], bool], timeout: float = 15, what: str = "") -> Scrape:
    """Scrapes until `condition` holds (a gauge read at scrape time, a counter moved by another thread)."""
    deadline = time.monotonic() + timeout
    while True:
        result = scrape(port)
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or 'the metrics'}:\n{result.text}")
        time.sleep(0.1)
