"""A data directory `tp up`, the backend or a trainer service creates is private (0700): it holds every job's
metrics, logs and runs (backend.db, mlflow.db, logs/, runs/), which the 0600 token files alone would not keep from
other local users. One that exists already is left as its owner made it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from trainingplatform_backend.db import create_db_engine
from trainingplatform_backend.settings import Settings as BackendSettings
from trainingplatform_backend.settings import ensure_internal_token
from trainingplatform_sdk.cli.stack import check_data_dir, ensure_token
from trainingplatform_sdk.trainer_service.supervisor import _claim_runs_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_tp_up_creates_a_private_data_dir(tmp_path: Path) -> None:
    check_data_dir(tmp_path / "data")
    assert mode(tmp_path / "data") == 0o700


def test_tp_up_leaves_an_existing_data_dir_as_it_is(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    check_data_dir(data_dir)
    assert mode(data_dir) == 0o755


def test_a_token_file_creates_a_private_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INTERNAL_AUTH_TOKEN", raising=False)
    ensure_token(tmp_path / "data")
    assert mode(tmp_path / "data") == 0o700


def test_the_backend_creates_a_private_data_dir(tmp_path: Path) -> None:
    ensure_internal_token(BackendSettings(data_dir=tmp_path / "data"))
    assert mode(tmp_path / "data") == 0o700


def test_the_backend_creates_a_private_directory_for_its_sqlite_database(tmp_path: Path) -> None:
    create_db_engine(f"sqlite:///{tmp_path / 'data' / 'backend.db'}").dispose()
    assert mode(tmp_path / "data") == 0o700


def test_a_trainer_service_creates_a_private_data_dir(tmp_path: Path) -> None:
    # tp-trainer-timm started on its own with a new TP_DATA_DIR made it 0755 (runs/ with its parents).
    fd = _claim_runs_dir(tmp_path / "data" / "runs", "timm")
    try:
        assert mode(tmp_path / "data") == 0o700
    finally:
        os.close(fd)
