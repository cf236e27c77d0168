"""The token files `tp up` and the trainer services read (`<data dir>/internal_auth_token`, the front-end and read
tokens): one readable by group or others gets a WARNING naming it and its mode, and is made 0600 (the backend and
the dashboard do the same: tests/dashboard/test_token_files.py)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from trainingplatform_sdk.cli.stack import ensure_token
from trainingplatform_sdk.trainer_service import settings as trainer_settings


def _loose(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret-token-value\n")
    path.chmod(0o644)


def _warned(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]


def test_tp_up_tightens_a_loose_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("FRONTEND_AUTH_TOKEN", raising=False)
    path = tmp_path / "frontend_auth_token"
    _loose(path)
    caplog.set_level(logging.WARNING)
    assert ensure_token(tmp_path, "FRONTEND_AUTH_TOKEN", "frontend_auth_token") == "secret-token-value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("0644" in message for message in _warned(caplog, path))


def test_a_trainer_service_tightens_a_loose_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / trainer_settings.TOKEN_FILE_NAME
    _loose(path)
    caplog.set_level(logging.WARNING)
    assert trainer_settings._internal_token({}, tmp_path) == "secret-token-value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any("0644" in message for message in _warned(caplog, path))
