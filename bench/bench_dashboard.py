"""The dashboard: live latency to a browser's event stream, fan-out to many tabs, and opening a long series.

A real `tp-backend` on SQLite and a real `tp-dashboard` in front of it (its read token for reads), clients logged
in with a session cookie as a browser is.

- `dashboard_latency_ms_p50` / `_p99`: a TrainingLogger (default settings, as in a trainer) logs 1,000 points a
  second for `seconds`; one client follows the job's /api/jobs/{id}/events, opened before the logger starts (a
  job watched from its start; one opened later gets live points within about two seconds, then these numbers).
  For every point: from the `log_metric` call to the moment the SSE event holding it is parsed at the client
  (same process, same clock).
- `dashboard_fanout`: `clients` event streams on one job while it logs 1,000 points a second for
  `fanout_seconds`: the number of clients that received every point exactly once (the target is all of them),
  with `dashboard_fanout_backend_subscriptions` (backend subscriptions the dashboard opened for them: 1), the
  dashboard's peak RSS (`dashboard_fanout_rss_mib`), its CPU use over the run (`dashboard_fanout_cpu_pct`, 100 =
  one core busy) and the p99 latency seen by the clients (`dashboard_fanout_latency_ms_p99`).
- `dashboard_series_open_ms`: GET /api/jobs/{id}/series?keys=train/loss&max_points=1000 on a job with
  `series_points` points of that key (written straight into the database, as bench_series does): the median of
  `runs` calls after one warm-up, the whole HTTP round trip (GetMetricSeries and JSON).

    .venv/bin/python bench/bench_dashboard.py [--seconds 10] [--clients 200] [--fanout-seconds 10]
        [--series-points 1000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
import psutil
from bench_series import fill
from support.backend import BackendProcess
from support.dashboard import DashboardProcess
from trainingplatform_sdk import TrainingLogger

RATE = 1000
_SEQUENCE = re.compile(rb'"sequence":(\d+)')


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _login(dashboard: DashboardProcess) -> dict[str, str]:
    """The session cookie of a logged-in browser."""
    response = httpx.get(dashboard.login_url, follow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    return {"tp_session": response.cookies["tp_session"]}


def _produce(logger: TrainingLogger, points: int, logged_at: dict[int, float]) -> None:
    """Logs `points` points at RATE per second; the n-th point of a fresh job gets sequence n."""
    start = time.perf_counter()
    for n in range(1, points + 1):
        target = start + n / RATE
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        logged_at[n] = time.perf_counter()
        logger.log_metric("train/loss", 1.0 / n, step=n)


async def _follow(
    url: str,
    cookies: dict[str, str],
    points: int,
    arrivals: list[float],
    logged_at: dict[int, float],
    ready: asyncio.Event,
) -> tuple[int, int]:
    """One client: reads the stream until it holds `points` distinct points; (distinct, duplicates)."""
    seen: set[int] = set()
    duplicates = 0
    async with (
        httpx.AsyncClient(cookies=cookies, timeout=httpx.Timeout(60, read=None)) as client,
        client.stream("GET", url) as response,
    ):
        ready.set()
        async for line in response.aiter_lines():
            if not line.startswith('data: {"points"'):
                continue
            now = time.perf_counter()
            for match in _SEQUENCE.finditer(line.encode()):
                sequence = int(match.group(1))
                if sequence in seen:
                    duplicates += 1
                    continue
                seen.add(sequence)
                at = logged_at.get(sequence)
                if at is not None:
                    arrivals.append((now - at) * 1000)
            if len(seen) >= points:
                break
    return len(seen), duplicates


def _stream_test(
    backend: BackendProcess, dashboard: DashboardProcess, tmp: str, clients: int, seconds: float
) -> dict[str, float]:
    """`clients` streams on a job logging RATE points a second for `seconds`."""
    cookies = _login(dashboard)
    deadline = time.monotonic() + 30
    while dashboard.health()["job_subscriptions_open"] and time.monotonic() < deadline:
        time.sleep(0.1)  # the previous run's subscription has ended: every subscription counted below is ours
    job_id, token = backend.create_job()
    logger: TrainingLogger | None = None
    points = int(RATE * seconds)
    logged_at: dict[int, float] = {}
    latencies: list[float] = []
    before = dashboard.health()
    process = psutil.Process(dashboard.process.pid) if dashboard.process else None
    url = f"{dashboard.url}/api/jobs/{job_id}/events"
    results: list[tuple[int, int]] = []
    peak_rss = 0.0
    cpu = 0.0
    elapsed = 0.0

    async def main() -> None:
        nonlocal peak_rss, cpu, elapsed, logger
        readies = [asyncio.Event() for _ in range(clients)]
        tasks = [asyncio.create_task(_follow(url, cookies, points, latencies, logged_at, ready)) for ready in readies]
        await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 60)
        # The trainer starts once the job is watched, as under `tp train` or a dashboard opened on a queued job: a
        # logger that started unwatched sends every second until its next cursor read (README, Using it).
        for _ in range(300):
            if dashboard.health()["job_subscriptions_open"]:
                break
            await asyncio.sleep(0.1)
        logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=f"{tmp}/spool-{job_id}")
        logger.update_status("RUNNING")
        cpu_before = sum(process.cpu_times()[:2]) if process else 0.0
        started = time.perf_counter()
        producer = threading.Thread(target=_produce, args=(logger, points, logged_at), daemon=True)
        producer.start()
        while not all(task.done() for task in tasks):
            if process:
                peak_rss = max(peak_rss, process.memory_info().rss / 2**20)
            await asyncio.sleep(0.2)
            if time.perf_counter() - started > seconds + 60:
                break
        elapsed = time.perf_counter() - started
        cpu = (sum(process.cpu_times()[:2]) - cpu_before) / elapsed * 100 if process else 0.0
        for task in tasks:
            if task.done():
                results.append(task.result())
            else:
                task.cancel()
        producer.join(5)

    try:
        asyncio.run(main())
    finally:
        if logger is not None:
            logger.update_status("COMPLETED")
            logger.close(30)
    after = dashboard.health()
    complete = sum(1 for distinct, duplicates in results if distinct == points and duplicates == 0)
    ordered = sorted(latencies) or [math.nan]
    return {
        "complete": complete,
        "subscriptions": after["job_subscriptions_total"] - before["job_subscriptions_total"],
        "p50": statistics.median(ordered),
        "p99": _percentile(ordered, 0.99),
        "rss_mib": peak_rss,
        "cpu_pct": cpu,
    }


def _series_open(backend: BackendProcess, dashboard: DashboardProcess, points: int, runs: int) -> float:
    job_id, _ = backend.create_job()
    fill(backend.database_url, job_id, points)
    with httpx.Client(base_url=dashboard.url, cookies=_login(dashboard), timeout=120) as client:
        path = f"/api/jobs/{job_id}/series?keys=train/loss&max_points=1000"
        first = client.get(path)
        assert first.status_code == 200, first.text
        (series,) = first.json()["series"]
        assert series["total_points"] == points, series["total_points"]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            response = client.get(path)
            response.json()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def run(
    seconds: float = 10.0,
    clients: int = 200,
    fanout_seconds: float = 10.0,
    series_points: int = 1_000_000,
    runs: int = 5,
) -> dict[str, float]:
    """Every number of the module docstring."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(f"sqlite:///{tmp}/dashboard.db", Path(tmp) / "data")
        backend.start()
        dashboard = DashboardProcess(backend, Path(tmp), {"TP_LOG_LEVEL": "WARNING"})
        try:
            dashboard.start()
            single = _stream_test(backend, dashboard, tmp, 1, seconds)
            results["dashboard_latency_ms_p50"] = single["p50"]
            results["dashboard_latency_ms_p99"] = single["p99"]
            fanout = _stream_test(backend, dashboard, tmp, clients, fanout_seconds)
            results["dashboard_fanout"] = fanout["complete"]
            results["dashboard_fanout_clients"] = clients
            results["dashboard_fanout_backend_subscriptions"] = fanout["subscriptions"]
            results["dashboard_fanout_rss_mib"] = fanout["rss_mib"]
            results["dashboard_fanout_cpu_pct"] = fanout["cpu_pct"]
            results["dashboard_fanout_latency_ms_p99"] = fanout["p99"]
            results["dashboard_series_open_ms"] = _series_open(backend, dashboard, series_points, runs)
        finally:
            dashboard.close()
            backend.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--fanout-seconds", type=float, default=10.0)
    parser.add_argument("--series-points", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(run(args.seconds, args.clients, args.fanout_seconds, args.series_points, args.runs), indent=2))


if __name__ == "__main__":
    main()
