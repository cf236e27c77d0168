"""The Node client checks the caller's own inputs before any call and throws at once, naming the option: a cursor
that is not a non-negative 64-bit integer, a non-integer `epochs`, an unknown `minLevel`, `createJob()` without
options. Such a mistake used to surface as a local serialization error (INTERNAL), which subscribeTelemetry took
for a broken connection and retried for `maxReconnectMs` (60 s by default)."""

from __future__ import annotations

import json
from pathlib import Path

from support.backend import BackendProcess
from support.node import run_node
from trainingplatform_sdk.clients import JobsClient

HERE = Path(__file__).parent

# case -> (error name, the option its message names)
EXPECTED = {
    "cursor 1.5": ("RangeError", "metricSequence"),
    "cursor -1n": ("RangeError", "logSequence"),
    "cursor 2^63": ("RangeError", "statusSequence"),
    "cursor text": ("TypeError", "epochSummarySequence"),
    "createJob()": ("TypeError", "createJob"),
    "epochs 1.5": ("RangeError", "epochs"),
    "epochs text": ("TypeError", "epochs"),
    "minLevel WARNNG": ("RangeError", "minLevel"),
    "minLevel 99": ("RangeError", "minLevel"),
}


def test_node_client_refuses_the_callers_bad_inputs_at_once(backend: BackendProcess) -> None:
    with JobsClient(backend.address, backend.internal_token) as client:
        job = client.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False).job
    env = {"TP_BACKEND_ADDRESS": backend.address, "TP_TOKEN": backend.internal_token, "TP_JOB_ID": job.job_id}
    output = run_node(HERE / "bad_inputs.mjs", env, timeout=150)
    answers = {answer["case"]: answer for answer in map(json.loads, output.splitlines())}
    for case, (name, option) in EXPECTED.items():
        answer = answers[case]
        assert answer["name"] == name and answer["code"] is None, answer
        assert option in answer["message"], answer
        # Thrown before any call, not after maxReconnectMs (20 s) of retries: a loose bound.
        assert answer["ms"] < 5000, answer
    assert answers["minLevel WARNING"]["name"] == "none", answers["minLevel WARNING"]
    with JobsClient(backend.address, backend.internal_token) as client:
        assert [listed.job_id for listed in client.list_jobs()] == [job.job_id]  # no job from a refused createJob
