"""JobsClient refuses a status or log level it does not know with a ValueError that lists the valid names, before
any call (a library user's typo is not a protobuf error)."""

from __future__ import annotations

import pytest
from trainingplatform_sdk.clients import JobsClient


def test_list_jobs_lists_the_valid_statuses(unreachable_address: str):
    with JobsClient(unreachable_address, "token") as client, pytest.raises(ValueError) as raised:
        next(client.list_jobs(statuses=["running", "bogus"]))
    assert str(raised.value) == (
        "unknown job status 'bogus': must be one of pending, queued, running, completed, failed, cancelled"
    )


def test_logs_lists_the_valid_levels(unreachable_address: str):
    with JobsClient(unreachable_address, "token") as client, pytest.raises(ValueError) as raised:
        next(client.logs("a-job", min_level="verbose"))
    assert str(raised.value) == "unknown log level 'verbose': must be one of debug, info, warning, error, critical"


def test_unspecified_is_not_a_name_a_caller_may_pass(unreachable_address: str):
    with JobsClient(unreachable_address, "token") as client, pytest.raises(ValueError, match="must be one of"):
        next(client.list_jobs(statuses=["unspecified"]))
