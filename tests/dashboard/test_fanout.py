"""The fan-out's rules: cursors, per-client filtering, bounded queues, the catch-up of a tab that slept past the
retained history (real processes), and the one place that maps backend errors to HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from support.dashboard import SseReader, own_stack
from trainingplatform_dashboard.errors import field_of, from_platform_error
from trainingplatform_dashboard.fanout import Client, Cursor, Event
from trainingplatform_dashboard.feed import pick_key_metric
from trainingplatform_sdk import TrainingLogger
from trainingplatform_sdk.errors import PlatformError
from trainingplatform_sdk.telemetry import LoggerSettings


def test_cursor_text_round_trips_and_m_alone_means_metrics_only() -> None:
    cursor = Cursor(12, 3, 2, 1)
    assert cursor.text() == "m12l3s2e1"
    assert Cursor.parse(cursor.text()) == cursor
    assert Cursor.parse("m1200") == Cursor(1200, 0, 0, 0)
    assert Cursor.parse("") == Cursor()
    for bad in ("x", "m-1", "l1m2", "m" + "9" * 17, "m1 l2"):
        with pytest.raises(ValueError):
            Cursor.parse(bad)
    assert Cursor(5, 1, 0, 0).covers(Cursor(5, 0, 0, 0))
    assert not Cursor(5, 0, 0, 0).covers(Cursor(4, 1, 0, 0))
    assert Cursor(5, 0, 2, 0).max(Cursor(4, 1, 0, 0)) == Cursor(5, 1, 2, 0)


def _metrics(sequences: list[int], after: Cursor) -> Event:
    points = [{"key": "k", "value": 1.0, "step": s, "epoch": None, "wall_time": 0.0, "sequence": s} for s in sequences]
    return Event("metrics", after, json.dumps({"points": points}), min(sequences), points)


def test_a_client_gets_only_what_lies_after_its_cursor_with_ids_that_resume_exactly() -> None:
    async def run() -> None:
        client = Client(Cursor(m=3), max_events=10)
        client.offer(_metrics([1, 2, 3], Cursor(m=3, l=0)))  # all covered: nothing sent
        assert not client.queue
        client.offer(_metrics([2, 3, 4, 5], Cursor(m=5)))
        client.offer(_metrics([6], Cursor(m=6, l=2)))
        chunks = client.take().decode().split("\n\n")
        assert chunks[0].startswith("id: m5l0s0e0\nevent: metrics\n")
        assert '"sequence":4' in chunks[0].replace(" ", "") and '"sequence":3' not in chunks[0].replace(" ", "")
        assert chunks[1].startswith("id: m6l2s0e0\n")
        client.finish("COMPLETED")
        assert client.take().decode() == 'event: end\ndata: {"status":"COMPLETED"}\n\n'

    asyncio.run(run())


def test_a_client_that_falls_too_far_behind_is_cut_off_and_never_holds_others() -> None:
    async def run() -> None:
        slow, fast = Client(Cursor(), max_events=3), Client(Cursor(), max_events=3)
        for sequence in range(1, 11):
            event = _metrics([sequence], Cursor(m=sequence))
            slow.offer(event)
            fast.offer(event)
            fast.take()
        assert slow.overflowed and len(slow.queue) == 3
        # What the slow tab received ends at m3: its EventSource resumes from there.
        assert slow.take().decode().split("\n\n")[-2].startswith("id: m3l0s0e0")
        assert not fast.overflowed and fast.cursor == Cursor(m=10)

    asyncio.run(run())


def test_invalid_argument_and_not_found_messages_give_their_field() -> None:
    assert field_of("spec.training.epochs must be between 1 and 10000; got 0") == "spec.training.epochs"
    assert field_of("advanced_config.extra: unknown timm option 'x'; did you mean 'y'") == "advanced_config.extra"
    assert field_of("model_config.name: unknown timm model 'resnet9000'") == "model_config.name"
    assert field_of("spec.dataset needs a built-in name (e.g. `digits`) or a path") == "spec.dataset"
    assert field_of("no trainer is configured for framework 'x'") is None
    error = from_platform_error(PlatformError("spec.model.name is required", code=grpc.StatusCode.INVALID_ARGUMENT))
    assert (error.status, error.code, error.field) == (400, "INVALID_ARGUMENT", "spec.model.name")
    statuses = {
        grpc.StatusCode.NOT_FOUND: 404,
        grpc.StatusCode.FAILED_PRECONDITION: 409,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.PERMISSION_DENIED: 502,
    }
    for code, status in statuses.items():
        mapped = from_platform_error(PlatformError("x: y", code=code))
        assert mapped.status == status and mapped.field == ("x" if code == grpc.StatusCode.NOT_FOUND else None)
    # A trainer's NOT_FOUND names the field as its INVALID_ARGUMENT does: the new-job form shows it there.
    missing = PlatformError(
        "dataset_config.path: '/data/x' does not exist on this trainer", code=grpc.StatusCode.NOT_FOUND
    )
    assert from_platform_error(missing).field == "dataset_config.path"
    assert from_platform_error(PlatformError("job 'x' does not exist", code=grpc.StatusCode.NOT_FOUND)).field is None


def test_the_jobs_list_shows_a_validation_metric_before_a_loss() -> None:
    assert pick_key_metric(["system/cpu", "train/loss", "val/accuracy"]) == "val/accuracy"
    assert pick_key_metric(["train/loss", "val/f1"]) == "val/f1"
    assert pick_key_metric(["system/cpu"]) is None


def _sequences(reader: SseReader, upto: int, seen: list[int]) -> list[int]:
    """Reads `reader`'s metric events until `seen` holds every sequence from 1 to `upto`; returns `seen`."""
    while not set(range(1, upto + 1)) <= set(seen):
        event = reader.next(timeout=15)
        assert event is not None, f"the tab's stream ended after {len(seen)} of {upto} points"
        if event.event == "metrics":
            seen.extend(p["sequence"] for p in event.json()["points"])
    return seen


@contextlib.contextmanager
def _busy_job(tmp_path: Path, env: dict[str, str]) -> Iterator[tuple[Any, httpx.Client, str, TrainingLogger]]:
    """A dashboard (`env`) on its own backend, a logged-in client, and a RUNNING job whose logger sent 100 points in
    about 100 small batches, every one read by a first tab (one event each); yields (dashboard, client, job id,
    logger) and completes the job at the end."""
    with own_stack(tmp_path, env) as (backend, dashboard):
        job_id, token = backend.create_job()
        client = httpx.Client(base_url=dashboard.url, timeout=30)
        assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
        logger = TrainingLogger(
            job_id,
            backend_address=backend.address,
            token=token,
            spool_dir=tmp_path / "spool",
            settings=LoggerSettings(flush_interval_s=0.01),
        )
        logger.update_status("RUNNING")
        first = SseReader(client, f"/api/jobs/{job_id}/events")
        for step in range(1, 101):
            logger.log_metric("train/loss", float(step), step=step)
            time.sleep(0.002)
        assert logger.flush(timeout=15)
        assert sorted(_sequences(first, 100, [])) == list(range(1, 101))
        yield dashboard, client, job_id, logger
        first.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=15)


def test_a_tab_behind_the_retained_history_catches_up_then_shares_the_subscription(tmp_path: Path) -> None:
    with _busy_job(tmp_path, {"TP_DASHBOARD_HISTORY_EVENTS": "2"}) as (dashboard, client, job_id, logger):
        before = dashboard.health()
        late = SseReader(client, f"/api/jobs/{job_id}/events")  # from the start: behind the retained history
        seen_late = _sequences(late, 100, [])
        for step in range(101, 151):
            logger.log_metric("train/loss", float(step), step=step)
        _sequences(late, 150, seen_late)
        assert sorted(seen_late) == list(range(1, 151)), "every point once across the catch-up and the join"
        after = dashboard.health()
        assert after["catchup_subscriptions_total"] == before["catchup_subscriptions_total"] + 1
        assert after["job_subscriptions_total"] == before["job_subscriptions_total"]  # it joined the hub
        late.close()


def test_a_tab_joining_a_busy_job_gets_the_retained_history_without_being_dropped(tmp_path: Path) -> None:
    # More events retained (about 100) than a tab's queue holds (4): a tab that joins is sent them all at once.
    env = {"TP_DASHBOARD_CLIENT_QUEUE": "4", "TP_DASHBOARD_HISTORY_EVENTS": "500"}
    with _busy_job(tmp_path, env) as (dashboard, client, job_id, _):
        before = dashboard.health()
        late = SseReader(client, f"/api/jobs/{job_id}/events")  # joins the job's subscription from the start
        assert sorted(_sequences(late, 100, [])) == list(range(1, 101)), "every point once"
        after = dashboard.health()
        assert after["slow_clients_dropped_total"] == before["slow_clients_dropped_total"], after
        assert after["catchup_subscriptions_total"] == before["catchup_subscriptions_total"], "it joined the hub"
        late.close()


def test_a_backend_restart_breaks_nothing_the_stream_says_so_and_resumes_from_its_cursor(tmp_path: Path) -> None:
    with own_stack(tmp_path) as (backend, dashboard):
        job_id, token = backend.create_job()
        client = httpx.Client(base_url=dashboard.url, timeout=30)
        assert client.get(dashboard.login_url, follow_redirects=False).status_code == 303
        logger = TrainingLogger(job_id, backend_address=backend.address, token=token, spool_dir=tmp_path / "spool")
        logger.update_status("RUNNING")
        reader = SseReader(client, f"/api/jobs/{job_id}/events")
        seen: list[int] = []
        notices: list[str] = []

        def pump(upto: int) -> None:
            while not set(range(1, upto + 1)).issubset(seen):
                event = reader.next(timeout=30)
                assert event is not None
                if event.event == "metrics":
                    seen.extend(p["sequence"] for p in event.json()["points"])
                elif event.event.startswith("live_"):
                    notices.append(event.event)

        for step in range(1, 51):
            logger.log_metric("train/loss", float(step), step=step)
        pump(50)
        backend.kill()
        unavailable = client.get("/api/jobs")
        assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "UNAVAILABLE"
        # The page is told that its live updates are paused (once, however many resubscriptions fail) ...
        event = reader.next(timeout=15)
        assert event is not None and event.event == "live_unavailable", event
        error = event.json()["error"]
        assert error["code"] == "UNAVAILABLE" and "backend is unreachable" in error["message"], error
        time.sleep(2)  # several failed resubscriptions
        for step in range(51, 101):  # logged while the backend is down: spooled, sent after the restart
            logger.log_metric("train/loss", float(step), step=step)
        backend.start()
        pump(100)
        assert sorted(seen) == list(range(1, 101))
        assert notices == ["live_resumed"], notices  # ... and when they resume
        assert dashboard.health()["job_subscriptions_open"] == 1
        reader.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=30)


def test_a_tab_that_stops_reading_is_dropped_and_never_holds_back_the_others(tmp_path: Path) -> None:
    with own_stack(tmp_path, {"TP_DASHBOARD_CLIENT_QUEUE": "4"}) as (backend, dashboard), socket.socket() as stalled:
        job_id, token = backend.create_job()
        client = httpx.Client(base_url=dashboard.url, timeout=30)
        login = client.get(dashboard.login_url, follow_redirects=False)
        assert login.status_code == 303
        # A tab that stops reading: a tiny receive buffer and no reads at all.
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", dashboard.port))
        stalled.sendall(
            f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Cookie: tp_session={login.cookies['tp_session']}\r\n\r\n".encode()
        )
        wait_for_health = time.monotonic() + 10
        while dashboard.health()["event_stream_clients"] < 1:
            assert time.monotonic() < wait_for_health
            time.sleep(0.05)
        reader = SseReader(client, f"/api/jobs/{job_id}/events")
        logger = TrainingLogger(
            job_id,
            backend_address=backend.address,
            token=token,
            spool_dir=tmp_path / "spool",
            settings=LoggerSettings(flush_interval_s=0.005),
        )
        logger.update_status("RUNNING")
        key = "train/" + "x" * 200  # large events fill the stalled socket's buffers quickly
        seen: list[int] = []
        total = 20_000
        for step in range(1, total + 1):
            logger.log_metric(key, float(step), step=step)
            if step % 500 == 0:
                time.sleep(0.01)
        deadline = time.monotonic() + 60
        while not set(range(1, total + 1)).issubset(seen):
            event = reader.next(timeout=max(0.1, deadline - time.monotonic()))
            assert event is not None
            if event.event == "metrics":
                seen.extend(p["sequence"] for p in event.json()["points"])
        assert sorted(seen) == list(range(1, total + 1)), "the reading tab got every point once"
        health = dashboard.health()
        assert health["slow_clients_dropped_total"] >= 1, health
        assert health["event_stream_clients"] == 1, "the stalled tab no longer holds a place in the fan-out"
        stalled.close()  # its response ended (it would complete once read): the tab leaves without an error logged
        time.sleep(0.5)
        assert "ASGI callable returned without completing response" not in dashboard.log_text()
        reader.close()
        logger.update_status("COMPLETED")
        logger.close(timeout=30)
