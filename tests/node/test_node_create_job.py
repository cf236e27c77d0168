"""The Node client's createJob helper against a real backend: its idempotency key (`requestId`) reaches the
backend, so a retry with the same key returns the same job (as the Python client's create_job(request_id=...)
does), and an option the helper does not know is refused before any call instead of being dropped."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from support.backend import BackendProcess
from support.node import run_node
from trainingplatform_sdk.clients import JobsClient

HERE = Path(__file__).parent
SPEC = {"framework": "timm", "model": "resnet10t", "dataset": "digits", "dispatch": False}


def _create(backend: BackendProcess, options: dict, calls: int = 1) -> dict:
    env = {
        "TP_BACKEND_ADDRESS": backend.address,
        "TP_TOKEN": backend.internal_token,
        "TP_CREATE_OPTIONS": json.dumps(options),
        "TP_CALLS": str(calls),
    }
    return json.loads(run_node(HERE / "create_job.mjs", env, timeout=120))


def _job_ids(backend: BackendProcess) -> list[str]:
    with JobsClient(backend.address, backend.internal_token) as client:
        return [job.job_id for job in client.list_jobs()]


def test_a_node_create_job_retried_with_the_same_request_id_returns_the_same_job(backend: BackendProcess):
    key = str(uuid.uuid4())
    answer = _create(backend, {**SPEC, "displayName": "node retry", "requestId": key}, calls=2)
    assert "error" not in answer, answer
    first, retry = answer["jobs"]
    assert retry["job_id"] == first["job_id"], "a retry with the same requestId created a second job"
    assert first["has_token"] and retry["has_token"]
    assert _job_ids(backend) == [first["job_id"]]

    # The Python client with the same key and the same request gets that job too: both clients send one request.
    with JobsClient(backend.address, backend.internal_token) as client:
        python = client.create_job(
            framework="timm",
            model="resnet10t",
            dataset="digits",
            dispatch=False,
            display_name="node retry",
            request_id=key,
        )
    assert python.job.job_id == first["job_id"]

    # A new key is a new job; the same key with another request is refused, naming the key.
    other = _create(backend, {**SPEC, "displayName": "node retry", "requestId": str(uuid.uuid4())})
    assert other["jobs"][0]["job_id"] != first["job_id"]
    clash = _create(backend, {**SPEC, "displayName": "another name", "requestId": key})
    assert clash["error"]["code"] == "AlreadyExists" and key in clash["error"]["message"], clash
    assert len(_job_ids(backend)) == 2


@pytest.mark.parametrize("option", ["request_id", "idempotencyKey", "epoch"])
def test_the_node_create_job_refuses_an_option_it_does_not_know(backend: BackendProcess, option: str):
    answer = _create(backend, {**SPEC, option: "x"})
    assert answer["jobs"] == [] and answer["error"]["code"] is None, answer
    assert answer["error"]["name"] == "TypeError" and option in answer["error"]["message"], answer
    assert _job_ids(backend) == []
