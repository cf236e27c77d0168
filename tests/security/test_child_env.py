"""Model code runs with its job's token only: the service's own credentials never reach a training process."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from trainingplatform_sdk.trainer_service import supervisor

SERVICE_SECRETS = {
    "INTERNAL_AUTH_TOKEN": "internal-secret",
    "READ_AUTH_TOKEN": "read-secret",
    "FRONTEND_AUTH_TOKEN": "frontend-secret",
    "TP_AUTH_TOKEN": "front-end-client-secret",
    "JOB_TELEMETRY_TOKEN": "another-jobs-token",
}


def test_a_training_process_gets_its_job_token_and_none_of_the_services(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SERVICE_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TP_SOMETHING_HARMLESS", "kept")
    job = cast(Any, SimpleNamespace(telemetry_endpoint="grpc://127.0.0.1:1", telemetry_token="job.1.secret"))
    settings = cast(Any, SimpleNamespace(data_dir=Path("/srv/data"), data_roots=()))

    env = supervisor._child_env(job, settings)

    assert env["JOB_TELEMETRY_TOKEN"] == "job.1.secret"
    assert env["BACKEND_API_URL"] == "grpc://127.0.0.1:1"
    assert env["TP_SOMETHING_HARMLESS"] == "kept"
    leaked = {name for name, value in SERVICE_SECRETS.items() if value in env.values()}
    assert leaked == set()
