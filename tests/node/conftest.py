"""Fixtures of the Node client tests: a backend on SQLite (the Node client never sees the database)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.backend import BackendProcess


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendProcess]:
    """A started backend on an SQLite file (instead of the suite's `backend`, on SQLite and PostgreSQL), closed at
    teardown."""
    process = BackendProcess(f"sqlite:///{tmp_path / 'backend.db'}", tmp_path / "data")
    process.start()
    yield process
    process.close()
