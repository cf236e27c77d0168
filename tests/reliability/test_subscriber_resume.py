"""A subscriber that resumes after the end: the Python client resumes a broken subscription from its last
cursor, and a resumption past a job's terminal status must end instead of waiting for the deadline."""

from __future__ import annotations

import threading

import pytest
from support.backend import BackendProcess, auth
from support.streams import metric_messages
from trainingplatform.common.v1 import common_pb2
from trainingplatform.telemetry.v1 import telemetry_pb2
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.clients.jobs import Cursor, TelemetryEvent


def _subscribe(backend: BackendProcess, job_id: str, after: Cursor | None) -> tuple[threading.Thread, list]:
    events: list[TelemetryEvent | BaseException] = []

    def follow() -> None:
        try:
            with JobsClient(backend.address, backend.read_token) as client:
                events.extend(client.subscribe(job_id, after=after))
        except BaseException as error:  # reported by the test
            events.append(error)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread, events


@pytest.mark.timeout(180)
def test_a_subscriber_that_resumes_after_the_end(backend: BackendProcess) -> None:
    job_id, token = backend.create_job()
    telemetry = backend.telemetry()
    telemetry.StreamMetrics(metric_messages(job_id, 1, 5000), metadata=auth(token))
    for status in (common_pb2.JOB_STATUS_RUNNING, common_pb2.JOB_STATUS_COMPLETED):
        telemetry.UpdateStatus(telemetry_pb2.UpdateStatusRequest(job_id=job_id, status=status), metadata=auth(token))

    thread, events = _subscribe(backend, job_id, None)
    thread.join(60)
    assert not thread.is_alive()
    assert not [e for e in events if isinstance(e, BaseException)]
    assert events[-1].kind == "status" and events[-1].status.to_status == "COMPLETED"
    last = events[-1].cursor

    # The backend dies and comes back: the client resumes from the cursor it had, past the terminal status.
    backend.kill()
    backend.restart()
    for after in (last, Cursor(last.metric_sequence - 100, last.log_sequence, last.status_sequence, 0)):
        thread, resumed = _subscribe(backend, job_id, after)
        thread.join(30)
        assert not thread.is_alive(), f"a resumption from {after} after the end never ended"
        assert not [e for e in resumed if isinstance(e, BaseException)], resumed
        sent = [p.sequence for e in resumed if e.kind == "metrics" for p in e.metrics]
        assert sent == list(range(after.metric_sequence + 1, 5001))
        assert not [e for e in resumed if e.kind == "status"]
