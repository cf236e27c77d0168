"""The Node.js client (sdk/node) reads a bucketed metric series (GetMetricSeries) from a real backend."""

from __future__ import annotations

import json
from pathlib import Path

from support.backend import BackendProcess, auth
from support.node import run_node
from trainingplatform.telemetry.v1 import telemetry_pb2

HERE = Path(__file__).parent


def _series(backend: BackendProcess, token: str, job_id: str, **env: str) -> dict:
    env = {"TP_BACKEND_ADDRESS": backend.address, "TP_TOKEN": token, "TP_JOB_ID": job_id, **env}
    return json.loads(run_node(HERE / "call_metric_series.mjs", env, timeout=60))


def test_the_node_client_reads_a_bucketed_series(backend: BackendProcess):
    job_id, token = backend.create_job()
    message = telemetry_pb2.StreamMetricsRequest(job_id=job_id)
    for step in range(1000):
        value = 50.0 if step == 617 else step / 1000
        message.points.add(key="train/loss", value=value, step=step, wall_time=1.7e9, sequence=step + 1)
    backend.telemetry().StreamMetrics(iter([message]), metadata=auth(token), timeout=30)

    answer = _series(backend, backend.read_token, job_id, TP_KEYS="train/loss", TP_MAX_POINTS="10")
    assert answer["ok"] and answer["last_sequence"] == 1000
    (series,) = answer["series"]
    assert series["key"] == "train/loss" and series["total_points"] == 1000
    assert [(b["first_step"], b["last_step"], b["count"]) for b in series["buckets"]] == [
        (i * 100, i * 100 + 99, 100) for i in range(10)
    ]
    assert series["buckets"][6]["max"] == 50.0 and series["buckets"][9]["last"] == 0.999

    zoomed = _series(backend, token, job_id, TP_MIN_STEP="10", TP_MAX_STEP="19")["series"][0]
    assert [b["first_step"] for b in zoomed["buckets"]] == list(range(10, 20))

    bad = _series(backend, token, job_id, TP_MIN_STEP="20", TP_MAX_STEP="19")
    assert bad["code"] == "InvalidArgument"
