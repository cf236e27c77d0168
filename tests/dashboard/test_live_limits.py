"""Live updates within the backend's per-token subscription limit: the dashboard opens one SubscribeTelemetry call
per watched job with its one read token, and the backend allows TP_MAX_SUBSCRIPTIONS_PER_CALLER of them. A job
whose subscription the backend refuses tells its browsers so (never silent pings) and resumes when a slot frees;
one session follows at most TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION jobs live at once, so it cannot take every slot."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.backend import BackendProcess
from support.dashboard import DashboardProcess, SseEvent, SseReader, own_stack
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.telemetry import LoggerSettings


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[BackendProcess, DashboardProcess]]:
    backend_env, dashboard_env = request.param
    with own_stack(tmp_path, {"TP_DASHBOARD_LINGER_S": "0.3", **dashboard_env}, backend_env) as pair:
        yield pair


def logged_in(dashboard: DashboardProcess) -> httpx.Client:
    client = httpx.Client(base_url=dashboard.url, timeout=30)
    assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
    return client


def next_event(reader: SseReader, timeout: float, what: str) -> SseEvent:
    """The next event; fails naming `what` when only pings (or nothing) came for `timeout` seconds."""
    try:
        event = reader.next(timeout=timeout)
    except queue.Empty:
        raise AssertionError(
            f"no {what} within {timeout} s: the stream sent {reader.comments} ping(s) and nothing else"
        ) from None
    assert event is not None, f"the stream ended before {what}"
    return event


@pytest.mark.parametrize(
    "stack", [({"TP_MAX_SUBSCRIPTIONS_PER_CALLER": "2"}, {"TP_DASHBOARD_PING_S": "0.5"})], indirect=True
)
def test_a_job_the_backend_refuses_to_subscribe_says_so_and_resumes_when_a_slot_frees(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, dashboard = stack
    jobs = [backend.create_job() for _ in range(3)]
    client = logged_in(dashboard)
    readers = [SseReader(client, f"/api/jobs/{job_id}/events") for job_id, _ in jobs[:2]]
    try:
        time.sleep(1.0)  # both subscriptions are open: the read token's two slots are taken
        third = SseReader(client, f"/api/jobs/{jobs[2][0]}/events")
        readers.append(third)
        assert third.status_code == 200
        event = next_event(third, 8, "live_unavailable event")
        assert event.event == "live_unavailable", event
        data = event.json()
        assert data["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert "TP_MAX_SUBSCRIPTIONS_PER_CALLER" in data["error"]["message"]
        assert data["retry_in_s"] > 0
        readers[0].close()  # a slot frees once the first job's subscription lingered out
        event = next_event(third, 15, "live_resumed event")
        assert event.event == "live_resumed", event
        job_id, token = jobs[2]
        logger = TrainingLogger(
            job_id,
            backend_address=backend.address,
            token=token,
            spool_dir=tmp_path / "spool",
            settings=LoggerSettings(flush_interval_s=0.02),
        )
        try:
            logger.log_metric("train/loss", 0.5, step=1)
            kinds = []
            while "metrics" not in kinds:  # the job's replay (its status) comes first
                kinds.append(next_event(third, 15, "metrics after the subscription resumed").event)
            assert "live_unavailable" not in kinds, kinds
        finally:
            logger.close(timeout=15)
        assert "live updates of job" in dashboard.log_text()
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize("stack", [({"TP_MAX_SUBSCRIPTIONS_PER_CALLER": "2"}, {})], indirect=True)
def test_an_ended_jobs_stream_the_backend_refuses_waits_for_a_slot_then_replays_the_job(
    stack: tuple[BackendProcess, DashboardProcess], tmp_path: Path
) -> None:
    backend, dashboard = stack
    live = [backend.create_job()[0] for _ in range(2)]
    ended, token = backend.create_job()
    logger = TrainingLogger(ended, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool")
    logger.update_status("RUNNING")
    logger.log_message("hello from the ended job")
    logger.update_status("COMPLETED")
    logger.close(timeout=15)
    client = logged_in(dashboard)
    readers = [SseReader(client, f"/api/jobs/{job_id}/events") for job_id in live]
    try:
        time.sleep(1.0)  # both hubs' subscriptions are open: the read token's two slots are taken
        # An ended job's stream reads the job on a subscription of its own: refused, it waits for a slot (and
        # says so) instead of failing for good.
        stream = SseReader(client, f"/api/jobs/{ended}/events")
        readers.append(stream)
        event = next_event(stream, 8, "live_unavailable event")
        assert event.event == "live_unavailable", event
        data = event.json()
        assert data["error"]["code"] == "RESOURCE_EXHAUSTED" and data["retry_in_s"] > 0, data
        readers[0].close()  # a slot frees once the first job's subscription lingered out
        kinds = []
        while "end" not in kinds:
            event = next_event(stream, 20, "the ended job's events after a slot freed")
            assert event.event != "error", event
            kinds.append(event.event)
            if event.event == "logs":
                assert [r["message"] for r in event.json()["records"]] == ["hello from the ended job"]
        assert "live_resumed" in kinds and "logs" in kinds, kinds
        assert kinds.index("live_resumed") < kinds.index("logs"), kinds
        assert set(kinds[: kinds.index("live_resumed")]) <= {"live_unavailable"}, kinds
        assert event.json() == {"status": "COMPLETED"}
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize("stack", [({}, {"TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION": "2"})], indirect=True)
def test_one_session_follows_at_most_the_configured_number_of_jobs_live(
    stack: tuple[BackendProcess, DashboardProcess],
) -> None:
    backend, dashboard = stack
    jobs = [backend.create_job()[0] for _ in range(3)]
    client = logged_in(dashboard)
    readers = [SseReader(client, f"/api/jobs/{job_id}/events") for job_id in jobs[:2]]
    try:
        readers.append(SseReader(client, f"/api/jobs/{jobs[0]}/events"))  # another tab of a followed job: fine
        refused = SseReader(client, f"/api/jobs/{jobs[2]}/events")
        readers.append(refused)
        assert refused.status_code == 429, f"a third live job was served ({refused.status_code})"
        error = refused.next(timeout=5)
        assert error is None
        other = logged_in(dashboard)  # another session has its own allowance
        readers.append(SseReader(other, f"/api/jobs/{jobs[2]}/events"))
        assert readers[-1].status_code == 200
        readers[1].close()  # the first session stops following the second job ...
        deadline = time.monotonic() + 10
        while True:  # ... and may follow the third
            again = SseReader(client, f"/api/jobs/{jobs[2]}/events")
            readers.append(again)
            if again.status_code == 200:
                break
            assert time.monotonic() < deadline, "the session's slot was not given back"
            time.sleep(0.2)
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize("stack", [({}, {"TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION": "1"})], indirect=True)
def test_the_refusal_is_json_that_names_the_setting(stack: tuple[BackendProcess, DashboardProcess]) -> None:
    backend, dashboard = stack
    jobs = [backend.create_job()[0] for _ in range(2)]
    client = logged_in(dashboard)
    reader = SseReader(client, f"/api/jobs/{jobs[0]}/events")
    try:
        with client.stream("GET", f"/api/jobs/{jobs[1]}/events") as response:
            assert response.status_code == 429, f"a second live job was served ({response.status_code})"
            error = json.loads(response.read())["error"]
        assert error["code"] == "RESOURCE_EXHAUSTED"
        assert "TP_DASHBOARD_MAX_LIVE_JOBS_PER_SESSION" in error["message"]
        # A browser's EventSource cannot read the body of a 429: it gets the same error as an event, and the page
        # shows it.
        browser = SseReader(client, f"/api/jobs/{jobs[1]}/events", headers={"Accept": "text/event-stream"})
        try:
            event = next_event(browser, 5, "error event")
            assert event.event == "error" and event.json()["error"]["code"] == "RESOURCE_EXHAUSTED", event
            assert browser.next(timeout=5) is None, "the refused stream stays open"
        finally:
            browser.close()
    finally:
        reader.close()
