"""Token files readable by group or others: the backend (`<data dir>/internal_auth_token`,
`frontend_auth_token`) and the dashboard (`<TP_DATA_DIR>/frontend_auth_token`) log a WARNING naming the file and
its mode, and make it 0600 (the process owns it)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from trainingplatform_backend.settings import Settings as BackendSettings
from trainingplatform_backend.settings import ensure_frontend_token, ensure_internal_token
from trainingplatform_dashboard.backend import Backend
from trainingplatform_dashboard.settings import Settings as DashboardSettings


def loose_token(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("secret-token-value\n")
    path.chmod(0o644)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def warned(caplog: pytest.LogCaptureFixture, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(path) in r.getMessage()]


@pytest.mark.parametrize(
    ("name", "ensure"), [("internal_auth_token", ensure_internal_token), ("frontend_auth_token", ensure_frontend_token)]
)
def test_the_backend_warns_about_and_tightens_a_loose_token_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, ensure: object
) -> None:
    path = tmp_path / name
    loose_token(path)
    caplog.set_level(logging.WARNING)
    settings = ensure(BackendSettings(data_dir=tmp_path))  # type: ignore[operator]
    assert "secret-token-value" in (settings.internal_auth_token, settings.frontend_auth_token)
    assert mode(path) == 0o600, f"{name} stayed {mode(path):04o}"
    messages = warned(caplog, path)
    assert messages and "0644" in messages[0], messages


def test_the_backend_says_nothing_about_a_private_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    ensure_internal_token(BackendSettings(data_dir=tmp_path))  # written 0600
    ensure_internal_token(BackendSettings(data_dir=tmp_path))  # read back
    assert mode(tmp_path / "internal_auth_token") == 0o600
    assert not warned(caplog, tmp_path / "internal_auth_token")


def test_the_dashboard_warns_about_and_tightens_a_loose_token_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "frontend_auth_token"
    loose_token(path)
    caplog.set_level(logging.WARNING)
    backend = Backend.__new__(Backend)  # the token lookup only: no channel
    backend._settings = DashboardSettings(data_dir=tmp_path)
    backend._write_token = ""
    assert backend.write_token() == "secret-token-value"
    assert mode(path) == 0o600, f"frontend_auth_token stayed {mode(path):04o}"
    messages = warned(caplog, path)
    assert messages and "0644" in messages[0], messages
