"""The backend's gRPC health follows its PostgreSQL database (found by a review on 2026-12-07; each test failed on
the code before the fix): health stayed SERVING while the database was unreachable, so readiness probes kept a
backend that could only fail every call in the load balancer's rotation.

The backend reaches its database through a loopback TCP proxy that the tests stop (connections reset: a database
that is down) and stall (connections held, nothing answered: a network partition). The health is read with real
`grpc.health.v1.Health/Check` calls, straight to the backend. The `liveness` service stays SERVING throughout: a
Kubernetes liveness probe must not restart every backend while the database is away.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import create_engine, text
from support.backend import BackendProcess, auth, postgres_database
from support.proxy import ChaosProxy
from support.workers import WorkersBackend, separate_channel
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_backend.settings import load

from reliability.polling import wait_until

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
JOBS_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobsService"].full_name
PASSWORD = "not-for-logs-5e1f"
CHECKS = {"TP_DATABASE_CHECK_INTERVAL_S": "0.1", "TP_DATABASE_CHECK_TIMEOUT_S": "1"}
DOWN = re.compile(r" WARNING .*database .* health NOT_SERVING")
BACK = re.compile(r" INFO .*database .* health SERVING")


@pytest.fixture
def proxied_database() -> Iterator[tuple[ChaosProxy, str, str]]:
    """A fresh PostgreSQL database behind a loopback proxy: (the proxy, the URL through it with a password that
    PostgreSQL's trust authentication ignores, the direct URL)."""
    with postgres_database() as direct, ChaosProxy("127.0.0.1:5432", seed=0) as proxy:
        name = direct.rsplit("/", 1)[1]
        yield proxy, f"postgresql+psycopg://postgres:{PASSWORD}@127.0.0.1:{proxy.port}/{name}", direct


def _status(channel: grpc.Channel, service: str = "") -> int | None:
    try:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
    except grpc.RpcError:
        return None


def _down(proxy: ChaosProxy) -> None:
    """The database as a host that is down: every connection through the proxy is reset."""
    proxy.pause()
    proxy.cut_all()


def test_the_check_settings_have_defaults_and_refuse_a_zero_timeout() -> None:
    settings = load(env={})
    assert (settings.database_check_interval_s, settings.database_check_timeout_s) == (5.0, 2.0)
    assert load(env={"TP_DATABASE_CHECK_INTERVAL_S": "0"}).database_check_interval_s == 0  # no checks
    with pytest.raises(ValueError, match="TP_DATABASE_CHECK_TIMEOUT_S must be above 0"):
        load(env={"TP_DATABASE_CHECK_TIMEOUT_S": "0"})


@pytest.mark.timeout(180)
def test_health_is_not_serving_while_the_database_is_unreachable_and_shutdown_wins(
    proxied_database: tuple[ChaosProxy, str, str], tmp_path: Path
) -> None:
    proxy, url, direct = proxied_database
    backend = BackendProcess(url, tmp_path / "data", extra_env={**CHECKS, "TP_SHUTDOWN_GRACE_S": "60"})
    backend.start()
    try:
        channel = backend.channel
        job_id, token = backend.create_job()

        # Down: connections refused.
        _down(proxy)
        wait_until(lambda: _status(channel) == NOT_SERVING, 30, "health NOT_SERVING with the database down")
        assert _status(channel, JOBS_SERVICE) == NOT_SERVING
        assert _status(channel, "liveness") == SERVING
        proxy.resume()
        wait_until(lambda: _status(channel) == SERVING, 30, "health SERVING once the database is back")
        assert _status(channel, JOBS_SERVICE) == SERVING

        # Stalled: connections accepted and never answered. The check's own timeout ends its wait.
        proxy.stall()
        wait_until(lambda: _status(channel) == NOT_SERVING, 30, "health NOT_SERVING with the database stalled")
        assert _status(channel, "liveness") == SERVING
        proxy.unstall()
        wait_until(lambda: _status(channel) == SERVING, 30, "health SERVING once the database answers again")

        log = backend.log_text()
        assert len(DOWN.findall(log)) == 2, log  # one WARNING per outage, not one per failed check
        assert len(BACK.findall(log)) == 2, log
        assert PASSWORD not in log

        # Shutdown: a SIGTERM while the database does not answer, which answers again while a stream keeps the
        # shutdown going. Health stays NOT_SERVING: the checks end with the shutdown.
        stop_sending = threading.Event()

        def requests() -> Iterator[telemetry_pb2.StreamMetricsRequest]:
            sequence = 0
            while not stop_sending.is_set():
                sequence += 1
                point = telemetry_pb2.MetricPoint(key="loss", value=1.0, step=sequence, sequence=sequence, wall_time=1)
                yield telemetry_pb2.StreamMetricsRequest(job_id=job_id, points=[point])
                stop_sending.wait(0.05)  # a trainer logging: never quiet long enough for the drain to end it

        reader = create_engine(direct)

        def committed() -> int:
            with reader.connect() as conn:
                return conn.execute(
                    text(
                        "SELECT coalesce(max(sequence), 0) FROM metrics JOIN jobs ON jobs.id = metrics.job_pk "
                        "WHERE jobs.job_id = :j"
                    ),
                    {"j": job_id},
                ).scalar_one()

        def get_job() -> bool:
            try:
                request = jobs_pb2.GetJobRequest(job_id=job_id)
                backend.jobs().GetJob(request, metadata=auth(backend.internal_token), timeout=5)
            except grpc.RpcError:  # a pooled connection the outages closed: the pool drops them all
                return False
            return True

        wait_until(get_job, 30, "GetJob answers")
        call = backend.telemetry().StreamMetrics.future(requests(), metadata=auth(token), timeout=120)
        try:
            wait_until(committed, 30, "the stream commits")
            proxy.stall()  # the stream's next commit waits on the database
            wait_until(lambda: _status(channel) == NOT_SERVING, 30, "health NOT_SERVING with the database stalled")
            assert backend.process is not None
            backend.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "shutting down" in backend.log_text(), 30, "the shutdown began")
            before = committed()
            proxy.unstall()
            # The database answers the backend again for the time of many checks (one every 0.1 s): 40 messages,
            # 0.05 s apart, commit. Check calls are refused once the server stops taking calls: the log says what
            # the health did.
            wait_until(lambda: committed() >= before + 40, 60, "40 more messages committed during the shutdown")
        finally:
            stop_sending.set()
            reader.dispose()
        call.result(60)
        assert backend.process.wait(60) == 0
        shutdown_log = backend.log_text().split("shutting down", 1)[1]
        assert not BACK.search(shutdown_log), shutdown_log
    finally:
        backend.close()


@pytest.mark.timeout(180)
def test_each_worker_says_not_serving_while_the_database_is_unreachable(
    proxied_database: tuple[ChaosProxy, str, str], tmp_path: Path
) -> None:
    proxy, url, _ = proxied_database
    backend = WorkersBackend(url, tmp_path / "data", workers=2, extra_env=CHECKS)
    backend.start()
    try:
        _down(proxy)
        for worker in (0, 1):
            backend.wait_log(f"[worker {worker}]: the database", 30)

        def every_connection(status: int) -> bool:
            # Each channel has a connection of its own, which the kernel gives to either worker.
            channels = [separate_channel(backend.address) for _ in range(8)]
            try:
                return all(_status(channel) == status for channel in channels)
            finally:
                for channel in channels:
                    channel.close()

        wait_until(lambda: every_connection(NOT_SERVING), 30, "every worker NOT_SERVING")
        proxy.resume()
        wait_until(lambda: every_connection(SERVING), 30, "every worker SERVING again")
        log = backend.log_text()
        assert len(DOWN.findall(log)) == 2 and len(BACK.findall(log)) == 2, log
    finally:
        backend.close()
