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


@pytest.mark.parametrize(
    ("content", "wrong"),
    [("{not json", "is not valid JSON"), ('["a"]', "must hold a JSON object"), ('{"token_file": 3}', "token_file")],
)
def test_from_env_names_a_malformed_config_instead_of_passing_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, wrong: str
) -> None:
    # A config passed over left the caller with "no token ... run `tp up`", about a file that exists.
    config = tmp_path / "config.json"
    config.write_text(content)
    monkeypatch.setenv("TP_CONFIG", str(config))
    monkeypatch.setenv("TP_AUTH_TOKEN", "a-token")
    with pytest.raises(ValueError) as refused:
        JobsClient.from_env()
    assert str(config) in str(refused.value) and wrong in str(refused.value), str(refused.value)


def test_a_token_that_is_not_printable_ascii_is_named_by_its_source_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TP_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.setenv("TP_AUTH_TOKEN", "bad token é")
    with pytest.raises(ValueError) as refused:
        JobsClient.from_env()
    assert "TP_AUTH_TOKEN" in str(refused.value) and "bad token" not in str(refused.value)
    with pytest.raises(ValueError, match="printable ASCII"):
        JobsClient("127.0.0.1:1", "tab\tinside")
