"""Every double comes back bit for bit, on SQLite and PostgreSQL, through every read path.

SQLite stores an integral REAL in a column of REAL affinity as an integer on disk, which loses the sign of -0.0;
the backend's float columns therefore have no type affinity on SQLite (they still hold numbers, so SQL can compare
and aggregate them). NaN may come back as the canonical NaN; everything else must keep its exact bits.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from pathlib import Path

import grpc
from alembic import command
from sqlalchemy import create_engine, text
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend import db

VALUES = [
    -0.0,
    0.0,
    5e-324,
    -5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    0.1,
    -1.5,
    float(2**53 + 1),
    -float(2**53),
    1.0,
    math.inf,
    -math.inf,
    math.nan,
]
WALL_TIMES = [-0.0, 0.0, 1.5, 1_700_000_000.0, 1_700_000_000.123456789]


def bits(value: float) -> str:
    return struct.pack("<d", value).hex()


def assert_exact(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    for index, (value, wanted) in enumerate(zip(got, expected, strict=True)):
        if math.isnan(wanted):
            assert math.isnan(value), (index, value)
        else:
            assert bits(value) == bits(wanted), (index, value, wanted)


def _send_metrics(backend: BackendProcess, job_id: str, token: str) -> None:
    points = [
        telemetry_pb2.MetricPoint(
            key="v", value=value, wall_time=WALL_TIMES[i % len(WALL_TIMES)], sequence=i + 1, step=i
        )
        for i, value in enumerate(VALUES)
    ]
    response = backend.telemetry().StreamMetrics(
        iter([telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=points)]), metadata=auth(token), timeout=10
    )
    assert response.points_committed == len(VALUES)


def _send(backend: BackendProcess, job_id: str, token: str) -> None:
    _send_metrics(backend, job_id, token)
    records = [
        telemetry_pb2.LogRecord(level=2, message=f"r{i}", wall_time=wall_time, sequence=i + 1)
        for i, wall_time in enumerate(WALL_TIMES)
    ]
    backend.telemetry().StreamLogs(
        iter([telemetry_pb2.StreamLogsRequest(job_id=job_id, records=records)]), metadata=auth(token), timeout=10
    )
    summary = telemetry_pb2.EpochSummary(
        epoch=1, duration_seconds=-0.0, metrics={f"m{i}": value for i, value in enumerate(VALUES)}
    )
    backend.telemetry().RecordEpochSummary(
        telemetry_pb2.RecordEpochSummaryRequest(job_id=job_id, summary=summary), metadata=auth(token), timeout=10
    )


def _check_metrics(points: list[telemetry_pb2.MetricPoint]) -> None:
    assert [p.sequence for p in points] == list(range(1, len(VALUES) + 1))
    assert_exact([p.value for p in points], VALUES)
    assert_exact([p.wall_time for p in points], [WALL_TIMES[i % len(WALL_TIMES)] for i in range(len(VALUES))])


def _check_summary(summary: telemetry_pb2.EpochSummary) -> None:
    assert bits(summary.duration_seconds) == bits(-0.0)
    assert_exact([summary.metrics[f"m{i}"] for i in range(len(VALUES))], VALUES)


def _subscribe(backend: BackendProcess, job_id: str, *, live: list[str] | None = None) -> tuple[list, list, list]:
    """Reads a subscription until it has every point, record and the summary."""
    call = backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(backend.read_token), timeout=20
    )
    points: list[telemetry_pb2.MetricPoint] = []
    records: list[telemetry_pb2.LogRecord] = []
    summaries: list[telemetry_pb2.EpochSummary] = []
    try:
        for response in call:
            kind = response.WhichOneof("event")
            if kind == "metrics":
                points.extend(response.metrics.points)
            elif kind == "logs":
                records.extend(response.logs.records)
            elif kind == "epoch_summary":
                summaries.append(response.epoch_summary)
            if len(points) == len(VALUES) and len(records) == len(WALL_TIMES) and summaries:
                break
    finally:
        call.cancel()
    return points, records, summaries


def test_every_double_round_trips_through_list_metrics_and_replay(backend: BackendProcess):
    job_id, token = backend.create_job()
    _send(backend, job_id, token)

    listed = backend.jobs().ListMetrics(
        jobs_pb2.ListMetricsRequest(job_id=job_id), metadata=auth(backend.read_token), timeout=10
    )
    _check_metrics(list(listed.points))
    logs = backend.jobs().ListLogs(
        jobs_pb2.ListLogsRequest(job_id=job_id), metadata=auth(backend.read_token), timeout=10
    )
    assert_exact([r.wall_time for r in logs.records], WALL_TIMES)

    # A subscription opened after the commits replays everything from the database.
    points, records, summaries = _subscribe(backend, job_id)
    _check_metrics(points)
    assert_exact([r.wall_time for r in records], WALL_TIMES)
    _check_summary(summaries[0])

    # The stored values are still numbers that SQL can aggregate (no text, no blobs).
    engine = create_engine(backend.database_url)
    try:
        with engine.connect() as conn:
            low = conn.execute(text("SELECT min(value) FROM metrics WHERE key = 'v'")).scalar_one()
            assert low == -math.inf
            assert conn.execute(text("SELECT count(*) FROM metrics WHERE value = 0")).scalar_one() == 2
    finally:
        engine.dispose()


def test_a_live_subscriber_gets_the_same_bits(backend: BackendProcess):
    job_id, token = backend.create_job()
    call = backend.jobs().SubscribeTelemetry(
        jobs_pb2.SubscribeTelemetryRequest(job_id=job_id), metadata=auth(backend.read_token), timeout=20
    )
    points: list[telemetry_pb2.MetricPoint] = []
    try:
        # A log record first: once it arrives, the subscription follows live.
        backend.telemetry().StreamLogs(
            iter(
                [telemetry_pb2.StreamLogsRequest(job_id=job_id, records=[telemetry_pb2.LogRecord(level=2, sequence=1)])]
            ),
            metadata=auth(token),
            timeout=10,
        )
        responses = iter(call)
        while next(responses).WhichOneof("event") != "logs":
            pass
        _send_metrics(backend, job_id, token)
        for response in responses:
            if response.WhichOneof("event") == "metrics":
                points.extend(response.metrics.points)
            if len(points) >= len(VALUES):
                break
    except grpc.RpcError as error:  # pragma: no cover - shows the status in the failure
        raise AssertionError(error) from error
    finally:
        call.cancel()
    _check_metrics(points)


def test_the_migration_keeps_stored_rows_and_then_keeps_negative_zero(tmp_path: Path):
    """SQLite databases made before revision 0003 are copied into columns without affinity, rows unchanged."""
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    command.upgrade(db.alembic_config(url), "0002")
    rows = [(1, i + 1, "k", value, i, None, 1.5) for i, value in enumerate(VALUES)]
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO jobs (id, job_id, framework, display_name, model_name, model_config, dataset_config, "
            "training_config, advanced_config, status, error_message, error_detail, created_at, updated_at, "
            "trainer_address, trainer_run_id, mlflow_run_id, mlflow_tracking_uri, telemetry_token_hash, "
            "status_sequence, request_hash, dispatch_attempt, dispatch_attempt_address, dispatch_reasons) VALUES "
            "(1, 'j', 'timm', '', 'm', '{}', '{}', '{}', '{}', 'RUNNING', '', '', '2026-01-01 00:00:00', "
            "'2026-01-01 00:00:00', '', '', '', '', 'h', 1, '', 0, '', '')"
        )
        conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    db.migrate(url)
    with sqlite3.connect(path) as conn:
        (schema,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'metrics'").fetchone()
        assert "WITHOUT ROWID" in schema and "FLOAT" not in schema
        stored = conn.execute("SELECT value, typeof(value) FROM metrics ORDER BY sequence").fetchall()
        # Rows from before keep their values, as REAL numbers (NaN as NULL); -0.0 had lost its sign on disk already.
        assert [kind for _, kind in stored] == ["null" if math.isnan(v) else "real" for v in VALUES]
        assert_exact([math.nan if v is None else v for v, _ in stored], [0.0, *VALUES[1:]])
        conn.execute("INSERT INTO metrics VALUES (1, 1000, 'k', ?, 0, NULL, -0.0)", (-0.0,))
        value, wall_time = conn.execute("SELECT value, wall_time FROM metrics WHERE sequence = 1000").fetchone()
        assert bits(value) == bits(-0.0) and bits(wall_time) == bits(-0.0)
