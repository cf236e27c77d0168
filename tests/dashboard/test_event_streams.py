"""The ends of the dashboard's event streams, against real `tp-dashboard` processes: a jobs page that stops reading
is dropped like a job page (its queue bounded by TP_DASHBOARD_CLIENT_QUEUE), a dropped stream's response still
completes (its EventSource reconnects), and a stop (SIGTERM) ends every open stream without an error in the log."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from support.backend import BackendProcess, auth
from support.dashboard import DashboardProcess, SseReader, own_stack
from trainingplatform.common.v1 import common_pb2
from trainingplatform.jobs.v1 import jobs_pb2

UNFINISHED = "ASGI callable returned without completing response"


def logged_in(dashboard: DashboardProcess) -> tuple[httpx.Client, str]:
    """A client with a session, and the session cookie (for a raw socket)."""
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    login = client.get(dashboard.login_url, follow_redirects=False)
    assert login.status_code == 303, login.text
    return client, login.cookies["tp_session"]


def create_big_jobs(backend: BackendProcess, count: int) -> None:
    """`count` jobs whose jobs-page event is about 10 KB each (4-byte characters in every text shown)."""
    spec = common_pb2.JobSpec(
        framework="timm",
        model=common_pb2.ModelConfig(name="\U0001f600" * 250),
        dataset=common_pb2.DatasetConfig(path="/" + "\U0001f600" * 1999),
        training=common_pb2.TrainingConfig(epochs=1),
    )
    stub = backend.jobs()
    for index in range(count):
        request = jobs_pb2.CreateJobRequest(spec=spec, dispatch=False, display_name=f"{index}" + "\U0001f600" * 240)
        stub.CreateJob(request, metadata=auth(backend.internal_token), timeout=10)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 20) -> None:
    """Waits until `condition()` holds; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def stalled_stream(dashboard: DashboardProcess, cookie: str, path: str) -> socket.socket:
    """A tab that stops reading: a tiny receive buffer and no reads until the test reads."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", dashboard.port))
    stalled.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: tp_session={cookie}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return stalled


def read_to_end_of_response(stalled: socket.socket, timeout: float = 30) -> bytes:
    """Reads until the chunked response's last chunk (the connection stays open: keep-alive)."""
    stalled.settimeout(timeout)
    data = bytearray()
    while not data.endswith(b"0\r\n\r\n"):
        chunk = stalled.recv(1 << 20)
        assert chunk, f"the connection was closed before its response completed: ...{bytes(data[-200:])!r}"
        data += chunk
    return bytes(data)


def test_a_jobs_page_that_stops_reading_is_dropped_and_its_response_completes(tmp_path: Path) -> None:
    queue_events, big_jobs = 10, 500
    with own_stack(tmp_path, {"TP_DASHBOARD_CLIENT_QUEUE": str(queue_events), "TP_DASHBOARD_LINGER_S": "60"}) as (
        backend,
        dashboard,
    ):
        # More than the socket buffers of a tab that does not read take (about 3 MB on loopback): 5 MB.
        create_big_jobs(backend, big_jobs)
        client, cookie = logged_in(dashboard)
        first = SseReader(client, "/api/events/jobs")  # starts the feed
        wait_for("two polls of the jobs feed", lambda: dashboard.health()["jobs_polls_total"] >= 2)
        first.close()
        wait_for("the first follower gone", lambda: dashboard.health()["jobs_feed_clients"] == 0)
        with stalled_stream(dashboard, cookie, "/api/events/jobs") as stalled:
            # It is sent every job of the last poll at once (one event of its queue): its socket fills, and the
            # next send waits.
            wait_for("the stalled follower", lambda: dashboard.health()["jobs_feed_clients"] == 1)
            polls = dashboard.health()["jobs_polls_total"]
            backend.create_job()
            wait_for("a poll sending a job", lambda: dashboard.health()["jobs_polls_total"] >= polls + 2)
            for _ in range(queue_events + 5):  # then more changes than its queue holds
                backend.create_job()
            wait_for(
                "the jobs page that stopped reading dropped (it would queue every change for ever)",
                lambda: dashboard.health()["jobs_feed_clients"] == 0,
            )
            # Its response completes once it reads again: its EventSource reconnects and gets every job again.
            data = read_to_end_of_response(stalled)
            assert data.startswith(b"HTTP/1.1 200 ") and data.count(b"event: job\n") >= big_jobs
        time.sleep(0.5)
        assert UNFINISHED not in dashboard.log_text()


def test_the_first_jobs_page_of_a_fresh_feed_gets_a_first_poll_larger_than_its_queue(tmp_path: Path) -> None:
    queue_events, jobs = 5, 20
    with own_stack(tmp_path, {"TP_DASHBOARD_CLIENT_QUEUE": str(queue_events)}) as (backend, dashboard):
        created = {backend.create_job()[0] for _ in range(jobs)}
        client, _ = logged_in(dashboard)
        reader = SseReader(client, "/api/events/jobs")  # the first follower: the feed starts with it
        try:
            seen: set[str] = set()
            while not created <= seen:
                event = reader.next(timeout=20)
                assert event is not None, f"the first jobs page was dropped as slow after {len(seen)} of {jobs} jobs"
                if event.event == "job":
                    seen.add(event.json()["job_id"])
            assert dashboard.health()["jobs_feed_clients"] == 1, "its stream goes on"
        finally:
            reader.close()


def test_a_stop_ends_every_open_stream_without_an_error_in_the_log(tmp_path: Path) -> None:
    with own_stack(tmp_path) as (backend, dashboard):
        job_id, _ = backend.create_job()
        client, _ = logged_in(dashboard)
        readers = [
            SseReader(client, f"/api/jobs/{job_id}/events"),
            SseReader(client, f"/api/jobs/{job_id}/events"),
            SseReader(client, "/api/events/jobs"),
        ]
        wait_for("the streams open", lambda: dashboard.health()["event_stream_clients"] == 2)
        time.sleep(0.5)
        assert dashboard.stop(timeout=30) == 0
        for reader in readers:
            while (event := reader.next(timeout=10)) is not None:
                assert event.event in ("job", "status"), event
        log = dashboard.log_text()
        assert "Traceback" not in log, log
        assert "Exception in ASGI application" not in log, log
        assert UNFINISHED not in log, log
        # The streams ended when the stop began, not cancelled after uvicorn's graceful-shutdown wait.
        assert "timeout graceful shutdown exceeded" not in log, log
