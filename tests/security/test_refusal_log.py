"""Refused calls cannot flood the log: the first refusal of each reason is a line, the rest a count per interval."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from support.backend import BackendProcess, auth
from trainingplatform.jobs.v1 import jobs_pb2
from trainingplatform_sdk.server.refusals import RefusalLog

CALLS = 300


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the log, not the database, is under test
def test_a_flood_of_refused_calls_writes_one_line_per_reason(backend: BackendProcess) -> None:
    stub = backend.jobs()
    for index in range(CALLS):
        metadata = auth("not-a-token") if index % 2 else ()
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetJob(jobs_pb2.GetJobRequest(job_id="00000000-0000-0000-0000-000000000000"), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    lines = [line for line in backend.log_text().splitlines() if " refused " in line]
    assert len(lines) == 2, lines  # one for the missing token, one for the unknown token: not one per call
    assert any("missing `authorization: Bearer <token>` metadata" in line for line in lines)
    assert not any("not-a-token" in line for line in backend.log_text().splitlines())


def test_the_refusals_after_the_first_are_summarised_per_reason_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.refusals")

    async def flood() -> None:
        refusals = RefusalLog(log, interval_s=0.2)
        for _ in range(100):
            refusals.refused("/pkg.Service/A", "unknown token")
        for _ in range(50):
            refusals.refused("/pkg.Service/B", "missing token")
        await asyncio.sleep(0.5)  # past the interval: each reason's count has been logged once

    with caplog.at_level(logging.INFO, logger="test.refusals"):
        asyncio.run(flood())
    # This logger's records only: a garbage-collected task of an earlier test in the process may log meanwhile.
    messages = [record.getMessage() for record in caplog.records if record.name == "test.refusals"]
    assert len(messages) == 4, messages
    assert messages[0].startswith("refused /pkg.Service/A: unknown token")
    assert messages[1].startswith("refused /pkg.Service/B: missing token")
    assert "refused 99 more call(s)" in messages[2] and "unknown token" in messages[2]
    assert "refused 49 more call(s)" in messages[3] and "missing token" in messages[3]
