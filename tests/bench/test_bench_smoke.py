"""`make bench-smoke`: every benchmark runs briefly end to end and reports every number (no speed assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_reports_every_metric():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((ROOT / "bench" / "results" / "smoke.json").read_text())
    results = report["results"]
    for key in (
        "ingest_sqlite_points_per_s",
        "ingest_postgres_points_per_s",
        "legacy_http_points_per_s",
        "ingest_vs_legacy_ratio",
        "latency_ms_p50_1k",
        "latency_ms_p99_1k",
        "latency_ms_p50_50k",
        "latency_ms_p99_50k",
        "mlflow_log_metric_points_per_s",
        "mlflow_log_batch_points_per_s",
        "log_metric_us_median",
        "log_metric_us_p99",
        "sync_unary_us_median",
        "fanin_streams",
        "fanin_points_per_s",
        "fanin_backend_peak_rss_mib",
        "message_cpu_ms_backend",
        "message_cpu_ms_sdk",
        "reconnect_ms_p50",
        "reconnect_ms_p99",
        "flood_rss_peak_mib",
        "flood_calls_per_s",
        "series_sqlite_ms_1key",
        "series_postgres_ms_1key",
        "dashboard_latency_ms_p50",
        "dashboard_latency_ms_p99",
        "dashboard_series_open_ms",
        "dashboard_fanout_rss_mib",
    ):
        assert results[key] >= 0 if key.startswith("reconnect_ms") else results[key] > 0, key
    # 100 cursor reads at about a millisecond each: several clock ticks of the backend's CPU
    assert results["cursor_read_cpu_ms_backend"] > 0 and results["cursor_reads_per_s"] > 0
    # the bench itself fails unless every point of every trainer was committed and stored; 3 trainers nobody
    # watches for a second may cost the backend less than a clock tick, 3 watched ones several
    assert results["trainer_cpu_trainers"] == 3 and results["trainer_cpu_ms_backend_watched"] > 0
    for arm in ("unwatched", "unwatched_1s_reads"):
        assert results[f"trainer_cpu_ms_backend_{arm}"] >= 0, arm
    # gRPC's floor: the bench itself fails unless the bare server read every message; the server's CPU for 100
    # messages is several clock ticks, the client's share (less an idle loop) may round to 0 in a 1-second run
    assert results["grpc_floor_ms_server"] > 0
    assert "grpc_floor_ms_client" in results and "grpc_floor_ms_client_aio" in results
    assert "raw_h2_ms_client" in results  # and the server read every frame of the client with no gRPC library
    assert results["fanin_lost"] == 0 and results["fanin_duplicates"] == 0
    # where the fan-in's CPU went: the loggers and the backend worked (PostgreSQL's share may round to 0 in 1 s)
    assert results["fanin_backend_cpu_us_per_point"] > 0
    assert results["fanin_cpu_share_producers"] > 0 and results["fanin_cpu_share_backend"] > 0
    assert results["fanin_cpu_share_postgres"] >= 0
    assert results["flood_not_unauthenticated"] == 0
    for prefix in ("streams_20", "streams_20_w2") if "streams_20_w2_lost" in results else ("streams_20",):
        assert results[f"{prefix}_points_stored"] > 0 and results[f"{prefix}_p99_ms"] > 0, prefix
        assert results[f"{prefix}_backend_rss_mib"] > 0 and results[f"{prefix}_backend_cpu_ms_per_message"] > 0, prefix
        for key in ("lost", "unacked", "duplicates", "subscriber_missed", "subscriber_duplicates"):
            assert results[f"{prefix}_{key}"] == 0, f"{prefix}_{key}"
    # bench_peers, the SDK's case only: the peers need their own venv, which only the full run makes
    assert results["peer_loggers_measured"] == 1 and "peer_slowdown_pct_sdk" in results
    assert results["peer_points_per_s_sdk"] > 0 and results["peer_cpu_ms_per_1k_sdk"] > 0
    assert results["peer_caller_us_sdk"] >= 0 and results["peer_caller_us_p999_sdk"] >= 0
    assert results["dashboard_fanout"] == results["dashboard_fanout_clients"]
    assert results["dashboard_fanout_backend_subscriptions"] == 1
    assert "training_overhead_pct" in results
    assert results["training_epoch_s_telemetry_on"] > 0 and results["training_epoch_s_telemetry_off"] > 0
    # telemetry's own CPU during training, read from /proc in clock ticks (a short run may round to 0)
    assert results["training_sdk_cpu_pct"] >= 0 and results["training_backend_cpu_pct"] >= 0
    if len(os.sched_getaffinity(0)) >= 2:  # the placement with the backend on its own core needs a second CPU
        assert results["training_epoch_s_telemetry_on_backend_own_core"] > 0
        assert "training_overhead_pct_backend_own_core" in results
        assert results["training_sdk_cpu_pct_backend_own_core"] >= 0
        assert results["training_backend_cpu_pct_backend_own_core"] >= 0
    assert "ingest_sqlite_points_per_s" in result.stdout  # the table was printed
