"""Real trainer services for the tests: `tp-trainer-timm` processes on free loopback ports.

Two long-lived services serve most tests: `timm_trainer` trains for real with the TimmAdapter, `fake_trainer`
runs the tiny FakeAdapter (fake_adapter.py) so that cancel, kill and concurrency tests need no torch in the
training process. Tests needing their own service (shutdown) start one with `TrainerProcess`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .trainer_process import FAKE_ADAPTER, TrainerProcess


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only (overrides the SQLite + PostgreSQL parametrisation): the trainer service reaches the backend
    over gRPC, and the backend's database is covered by the backend's own tests."""
    return f"sqlite:///{tmp_path / 'backend.db'}"


@pytest.fixture(scope="session")
def timm_trainer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    """A timm trainer service with the real TimmAdapter; one job at a time."""
    trainer = TrainerProcess(tmp_path_factory.mktemp("timm-trainer"), env={"TP_MAX_CONCURRENT_JOBS": "1"}).start()
    yield trainer
    trainer.close()


@pytest.fixture(scope="session")
def _fake_trainer_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainerProcess]:
    trainer = TrainerProcess(
        tmp_path_factory.mktemp("fake-trainer"),
        env={"TP_MAX_CONCURRENT_JOBS": "2", "TP_TRAINER_ADAPTER": FAKE_ADAPTER, "TP_CANCEL_GRACE_S": "30"},
    ).start()
    yield trainer
    trainer.close()


@pytest.fixture
def fake_trainer(_fake_trainer_process: TrainerProcess) -> Iterator[TrainerProcess]:
    """A timm trainer service that runs the FakeAdapter, two jobs at a time; every run is stopped after the test."""
    yield _fake_trainer_process
    _fake_trainer_process.stop_all_runs()
