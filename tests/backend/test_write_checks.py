"""The checks every stream message passes from memory (`check_write_now`, `check_attempt_now`): they decide exactly as
the checks that read the database, and say so when memory cannot tell (never letting a write through unchecked)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from trainingplatform_backend import telemetry_service
from trainingplatform_backend.auth import JobTokenWindow, Kind, Principal
from trainingplatform_backend.db import create_db_engine, migrate
from trainingplatform_backend.store import Store
from trainingplatform_backend.subscriptions import Hub
from trainingplatform_backend.telemetry_service import Backend
from trainingplatform_sdk.errors import PermissionDeniedError, PlatformError


@pytest.fixture
def store_backend(tmp_path: Path) -> Iterator[Backend]:
    url = f"sqlite:///{tmp_path / 'backend.db'}"
    migrate(url)
    engine = create_db_engine(url)
    try:
        yield Backend(Store(engine), Hub(1000))
    finally:
        engine.dispose()


def test_the_write_window_from_memory_asks_for_a_read_when_it_cannot_tell():
    reads: list[str] = []
    ended = {"running": None, "ended": dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)}

    def lookup(job_id: str) -> dt.datetime | None:
        reads.append(job_id)
        return ended[job_id]

    window = JobTokenWindow(3600, lookup)
    running, late = Principal(Kind.JOB, "running"), Principal(Kind.JOB, "ended", 3)
    assert window.check_write_now("running", Principal(Kind.INTERNAL))  # only job tokens are ever refused
    assert not window.check_write_now("running", running)  # never read: memory cannot tell
    assert not window.check_write_now("ended", late)
    assert reads == []

    async def scenario() -> None:
        await window.check_write("running", running)
        with pytest.raises(PermissionDeniedError, match="its token stopped writing 3600 s later"):
            await window.check_write("ended", late)

    asyncio.run(scenario())
    assert reads == ["running", "ended"]
    assert window.check_write_now("running", running)
    # An ended job stays refused from memory, on every later message.
    for _ in range(3):
        with pytest.raises(PermissionDeniedError, match=r"job ended ended at .*Z; its token stopped writing"):
            window.check_write_now("ended", late)
    assert reads == ["running", "ended"]


def test_the_attempt_from_memory_refuses_a_superseded_attempt_and_rereads_when_stale(
    store_backend: Backend, monkeypatch: pytest.MonkeyPatch
):
    backend = store_backend
    backend.token_window.check_write_now = lambda job_id, principal: True  # type: ignore[method-assign]
    second = Principal(Kind.JOB, "job-1", 2)
    assert backend.check_attempt_now("job-1", Principal(Kind.JOB, "job-1"))  # CreateJob's token: no attempt
    assert not backend.check_attempt_now("job-1", second)  # the current attempt was never read
    backend.note_attempt("job-1", 2)
    assert backend.check_attempt_now("job-1", second)
    backend.note_attempt("job-1", 3)  # the dispatcher handed the job to another trainer
    with pytest.raises(PlatformError, match="attempt 2 of job job-1 was superseded by attempt 3") as refused:
        backend.check_attempt_now("job-1", second)
    assert refused.value.code == grpc.StatusCode.ABORTED
    assert not backend.check_attempt_now("job-1", Principal(Kind.JOB, "job-1", 4))  # newer than known: read
    monkeypatch.setattr(telemetry_service, "ATTEMPT_REFRESH_S", -1.0)
    assert not backend.check_attempt_now("job-1", Principal(Kind.JOB, "job-1", 3))  # known too long: read
