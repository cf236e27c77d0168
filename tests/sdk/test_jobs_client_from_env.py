"""JobsClient.from_env finds the backend and its token as `tp` does: the environment, then the config `tp up` wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.backend import BackendProcess
from trainingplatform_sdk.clients import JobsClient
from trainingplatform_sdk.clients._base import write_config


def test_from_env_uses_the_config_tp_up_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    backend.start()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(backend.internal_token)
        monkeypatch.setenv("TP_CONFIG", str(tmp_path / "config.json"))
        for name in ("TP_BACKEND_ADDRESS", "BACKEND_API_URL", "TP_AUTH_TOKEN", "INTERNAL_AUTH_TOKEN", "TP_DATA_DIR"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.chdir(tmp_path)  # no ./.data here
        write_config(backend_address=backend.address, token_file=token_file, data_dir=tmp_path / "data")

        with JobsClient.from_env() as jobs:
            created = jobs.create_job(framework="timm", model="resnet10t", dataset="digits", dispatch=False)
            assert jobs.get_job(created.job.job_id).job_id == created.job.job_id
    finally:
        backend.close()
