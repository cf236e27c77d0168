"""A PostgreSQL server that stops answering without closing its connections (a network partition, a frozen
primary), played by a proxy that holds every connection and forwards nothing (found by a review on 2026-12-06).

Before the fix the backend waited on such a database for ever: every call hung until its client's deadline (a
ListJobs with a 60 s deadline: DEADLINE_EXCEEDED after 60 s), nothing was logged, and no libpq keepalive,
`tcp_user_timeout` or `statement_timeout` was set. Now a statement the database has not answered within
TP_DATABASE_TIMEOUT_S fails the call UNAVAILABLE ("not answering"; clients retry), the backend logs it once, and
calls succeed again, with nothing lost, once the database answers.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from sqlalchemy.engine import make_url
from support.backend import BackendProcess, auth
from support.postgres import app_database
from support.proxy import ChaosProxy
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk import LoggerSettings, TrainingLogger

from reliability.polling import wait_until

FAST = LoggerSettings(reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.5)
TIMEOUT_S = 5  # TP_DATABASE_TIMEOUT_S given to the backend


def _through(proxy: ChaosProxy, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def _committed(backend: BackendProcess, job_id: str) -> int:
    try:
        return backend.cursor_row(job_id)["committed_count"]
    except Exception:  # the database is what is failing
        return 0


@pytest.mark.timeout(240)
def test_a_database_that_stops_answering_fails_calls_unavailable_and_they_recover(tmp_path: Path) -> None:
    with app_database() as (_, url), ChaosProxy("127.0.0.1:5432", seed=11) as proxy:
        backend = BackendProcess(
            _through(proxy, url), tmp_path / "data", extra_env={"TP_DATABASE_TIMEOUT_S": str(TIMEOUT_S)}
        )
        backend.start()
        logger: TrainingLogger | None = None
        try:
            job_id, token = backend.create_job()
            jobs, metadata = backend.jobs(), auth(backend.internal_token)
            logger = TrainingLogger(
                job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool", settings=FAST
            )
            for step in range(1, 51):
                logger.log_metric("loss", 1.0, step=step)
            wait_until(lambda: _committed(backend, job_id) == 50, 30, "the first 50 points committed")
            logged_before = len(backend.log_text().splitlines())

            proxy.stall()
            for step in range(51, 101):  # logged while the database does not answer
                logger.log_metric("loss", 1.0, step=step)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=5), metadata=metadata, timeout=60)
            waited = time.monotonic() - started
            print(f"ListJobs on a stalled database ended after {waited:.1f} s: {failed.value.code()}")
            # Before: DEADLINE_EXCEEDED after the client's 60 s, the backend still waiting.
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (failed.value.code(), failed.value.details())
            assert "not answering" in failed.value.details(), failed.value.details()
            assert waited < 30, waited
            # The pool dropped its connections; a call while the database still does not answer waits on a new
            # one (connect_timeout: 10 s), and fails the same way.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                jobs.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), metadata=metadata, timeout=60)
            waited = time.monotonic() - started
            print(f"GetJob on a stalled database ended after {waited:.1f} s: {failed.value.code()}")
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, (failed.value.code(), failed.value.details())
            assert "not answering" in failed.value.details(), failed.value.details()
            assert waited < 30, waited
            new_lines = backend.log_text().splitlines()[logged_before:]
            said = [line for line in new_lines if "not answered" in line and ("WARNING" in line or "ERROR" in line)]
            assert len(said) == 1, "not one warning:\n" + "\n".join(new_lines[-30:])

            proxy.unstall()
            listed = wait_until(
                lambda: _list(backend, metadata), 60, "ListJobs succeeds once the database answers again"
            )
            assert [job.job_id for job in listed.jobs] == [job_id]
            wait_until(lambda: _committed(backend, job_id) == 100, 60, "the 100 points committed")
            assert logger.close(30).error is None
            logger = None
            assert backend.metric_sequences(job_id) == list(range(1, 101))  # each point stored once
        finally:
            proxy.unstall()
            if logger is not None:
                logger.close(5)
            backend.close()


def _list(backend: BackendProcess, metadata: tuple[tuple[str, str], ...]) -> jobs_pb2.ListJobsResponse | None:
    try:
        return backend.jobs().ListJobs(jobs_pb2.ListJobsRequest(page_size=5), metadata=metadata, timeout=10)
    except grpc.RpcError:
        return None
