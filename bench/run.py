"""Runs the benchmarks, prints a table with targets, and writes bench/results/latest.json.

.venv/bin/python bench/run.py            # full (make bench)
.venv/bin/python bench/run.py --smoke    # every benchmark briefly, no verdicts (make bench-smoke, CI)
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# name -> (module, full arguments, smoke arguments)
BENCHMARKS: dict[str, tuple[str, dict[str, object], dict[str, object]]] = {
    "ingest": (
        "bench_ingest",
        {"points": 1_000_000, "batch": 5000, "legacy_seconds": 5.0},
        {"points": 20_000, "batch": 5000, "legacy_seconds": 0.5},
    ),
    "latency": ("bench_latency", {"seconds": 10.0}, {"seconds": 1.0}),
    "mlflow": ("bench_mlflow", {"seconds": 5.0}, {"seconds": 0.5}),
    "log_metric": ("bench_log_metric", {"quick": False}, {"quick": True}),
    "fanin": (
        "bench_fanin",
        {"streams": 100, "rate": 2000, "seconds": 30.0},
        {"streams": 4, "rate": 100, "seconds": 1.0},
    ),
    "message_cpu": ("bench_message_cpu", {"seconds": 10.0}, {"seconds": 1.0}),
    # the same traffic with a bare gRPC server and client: gRPC's own floor under message_cpu's numbers
    "grpc_floor": ("bench_grpc_floor", {"seconds": 10.0}, {"seconds": 1.0}),
    # a trainer's once-a-second GetStreamCursor, which docs/capacity.md counts beside its message
    "cursor_read": (
        "bench_cursor_read",
        {"rate": 500.0, "jobs": 200, "seconds": 10.0},
        {"rate": 100.0, "jobs": 5, "seconds": 1.0},
    ),
    # trainers nobody watches, on default settings and with the cursor read every second as before, and watched
    # ones: what docs/capacity.md prices a trainer at
    "trainer_cpu": (
        "bench_trainer_cpu",
        {"trainers": 40, "seconds": 15.0, "rounds": 2},
        {"trainers": 3, "seconds": 1.0, "rounds": 1},
    ),
    "reconnect": ("bench_reconnect", {"restarts": 10}, {"restarts": 2}),
    "flood": ("bench_flood", {"seconds": 10.0, "concurrency": 32}, {"seconds": 1.0, "concurrency": 4}),
    "series": ("bench_series", {"points": 1_000_000, "runs": 5}, {"points": 20_000, "runs": 1}),
    "dashboard": (
        "bench_dashboard",
        {"seconds": 10.0, "clients": 200, "fanout_seconds": 10.0, "series_points": 1_000_000, "runs": 5},
        {"seconds": 1.0, "clients": 5, "fanout_seconds": 1.0, "series_points": 20_000, "runs": 1},
    ),
    # 1,000 concurrent StreamMetrics calls (20-point message per stream per second) on PostgreSQL; the 2-worker run
    # (tp-backend --workers 2) is skipped in the smoke run only when the backend has no --workers.
    "streams": (
        "bench_streams",
        {"streams": 1000, "seconds": 60.0},
        {"streams": 20, "seconds": 2.0, "warmup_s": 1.0, "processes": 1, "channels": 2, "subscribers": 3},
    ),
    "streams_w2": (
        "bench_streams",
        {"streams": 1000, "seconds": 60.0, "workers": 2},
        {
            "streams": 20,
            "seconds": 2.0,
            "warmup_s": 1.0,
            "workers": 2,
            "processes": 1,
            "channels": 2,
            "subscribers": 3,
            "skip_without_workers": True,
        },
    ),
    "postgres": ("bench_postgres", {"seconds": 5.0}, {"seconds": 0.5}),
    # this SDK beside wandb (offline), MLflow (async, buffered) and Aim on the same work; the peers run in
    # .cache/bench-peers-venv, which the full run makes (pinned). The smoke run: the SDK only, no venv, no download.
    "peers": (
        "bench_peers",
        {"points": 50_000, "rounds": 3, "loop_runs": 5, "steps": 1500},
        {"points": 5_000, "rounds": 1, "loop_runs": 1, "steps": 200, "loggers": ("sdk",)},
    ),
    "training_overhead": (
        "bench_training_overhead",
        {"runs": 5, "epochs": 4, "pinned_runs": 3},
        {"runs": 1, "epochs": 2, "pinned_runs": 1},
    ),
}

# key -> (target, comparison) ; a missed target is shown as missed.
TARGETS: dict[str, tuple[float, Callable[[float, float], bool], str]] = {
    "ingest_sqlite_points_per_s": (250_000, lambda v, t: v >= t, ">="),
    "ingest_postgres_points_per_s": (250_000, lambda v, t: v >= t, ">="),
    "ingest_vs_legacy_ratio": (500, lambda v, t: v >= t, ">="),
    "latency_ms_p99_50k": (100, lambda v, t: v <= t, "<="),
    "commit_latency_ms_p99_50k": (100, lambda v, t: v <= t, "<="),
    "log_metric_us_median": (2, lambda v, t: v <= t, "<="),
    "fanin_points_per_s": (150_000, lambda v, t: v >= t, ">="),
    "fanin_lost": (0, lambda v, t: v <= t, "=="),
    "fanin_duplicates": (0, lambda v, t: v <= t, "=="),
    "fanin_backend_peak_rss_mib": (1024, lambda v, t: v <= t, "<="),
    "reconnect_ms_p99": (1000, lambda v, t: v <= t, "<="),
    "flood_rss_growth_mib": (100, lambda v, t: v <= t, "<="),
    "flood_not_unauthenticated": (0, lambda v, t: v <= t, "=="),
    "series_sqlite_ms_1key": (1000, lambda v, t: v <= t, "<="),
    "series_postgres_ms_1key": (1000, lambda v, t: v <= t, "<="),
    "dashboard_latency_ms_p99": (250, lambda v, t: v <= t, "<="),
    "dashboard_fanout": (200, lambda v, t: v >= t, ">="),
    "dashboard_fanout_backend_subscriptions": (1, lambda v, t: v <= t, "=="),
    "dashboard_series_open_ms": (1000, lambda v, t: v <= t, "<="),
    # bench_peers: the SDK's training-loop slowdown, and every ratio to a peer at least the one of 2026-12-02
    # (caller µs peer/SDK, points/s SDK/peer, CPU per point peer/SDK).
    "peer_slowdown_pct_sdk": (2, lambda v, t: v <= t, "<="),
    "peer_lost_sdk": (0, lambda v, t: v <= t, "=="),
    "peer_ratio_caller_wandb": (575, lambda v, t: v >= t, ">="),
    "peer_ratio_caller_mlflow": (912, lambda v, t: v >= t, ">="),
    "peer_ratio_caller_aim": (406, lambda v, t: v >= t, ">="),
    "peer_ratio_points_per_s_wandb": (26.6, lambda v, t: v >= t, ">="),
    "peer_ratio_points_per_s_mlflow": (56, lambda v, t: v >= t, ">="),
    "peer_ratio_points_per_s_aim": (18.8, lambda v, t: v >= t, ">="),
    "peer_ratio_cpu_wandb": (36, lambda v, t: v >= t, ">="),
    "peer_ratio_cpu_mlflow": (55, lambda v, t: v >= t, ">="),
    "peer_ratio_cpu_aim": (31.4, lambda v, t: v >= t, ">="),
    # bench_streams: nothing lost, unacked or doubled; 95 % of the offered 20,000 points/s; send -> subscriber p99
    # within a second; the backend's processes together within 1 GiB.
    "streams_1000_points_per_s": (19_000, lambda v, t: v >= t, ">="),
    "streams_1000_lost": (0, lambda v, t: v <= t, "=="),
    "streams_1000_unacked": (0, lambda v, t: v <= t, "=="),
    "streams_1000_duplicates": (0, lambda v, t: v <= t, "=="),
    "streams_1000_subscriber_missed": (0, lambda v, t: v <= t, "=="),
    "streams_1000_p99_ms": (1000, lambda v, t: v <= t, "<="),
    "streams_1000_backend_rss_mib": (1024, lambda v, t: v <= t, "<="),
    "streams_1000_w2_points_per_s": (19_000, lambda v, t: v >= t, ">="),
    "streams_1000_w2_lost": (0, lambda v, t: v <= t, "=="),
    "streams_1000_w2_unacked": (0, lambda v, t: v <= t, "=="),
    "streams_1000_w2_duplicates": (0, lambda v, t: v <= t, "=="),
    "streams_1000_w2_subscriber_missed": (0, lambda v, t: v <= t, "=="),
    "streams_1000_w2_p99_ms": (1000, lambda v, t: v <= t, "<="),
    "streams_1000_w2_backend_rss_mib": (1024, lambda v, t: v <= t, "<="),
    "training_overhead_pct": (2, lambda v, t: v <= t, "<="),
    "training_overhead_pct_backend_own_core": (1, lambda v, t: v <= t, "<="),
    # issue 16: what one message costs on each side (one point per message).
    "message_cpu_ms_backend": (0.20, lambda v, t: v <= t, "<="),
    "message_cpu_ms_sdk": (0.15, lambda v, t: v <= t, "<="),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run everything briefly; no verdicts")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    results: dict[str, float] = {}
    failed: dict[str, str] = {}
    out = HERE / "results" / ("smoke.json" if args.smoke else "latest.json")
    for name, (module_name, full, smoke) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        print(f"running {name} ...", file=sys.stderr, flush=True)
        # One benchmark that fails (a peer's store, a service that would not start) is reported and the others
        # still run: a full run takes half an hour.
        try:
            module = importlib.import_module(module_name)
            results.update(module.run(**(smoke if args.smoke else full)))
        except Exception:
            failed[name] = traceback.format_exc()
            print(f"{name} FAILED:\n{failed[name]}", file=sys.stderr, flush=True)
        _write(out, args.smoke, results, failed)  # what ran so far survives an interrupted run
    print(f"\n{'metric':48} {'value':>14}  target")
    for key, value in results.items():
        verdict = ""
        if key in TARGETS and not args.smoke:
            target, passes, sign = TARGETS[key]
            verdict = f"{sign} {target:,}  {'met' if passes(value, target) else 'MISSED'}"
        print(f"{key:48} {value:>14,.2f}  {verdict}")
    print(f"\nwrote {out.relative_to(HERE.parent)}")
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks above and in {out.name})", file=sys.stderr)
        sys.exit(1)


def _write(out: Path, smoke: bool, results: dict[str, float], failed: dict[str, str]) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                "smoke": smoke,
                "results": results,
                "failed": failed,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
