"""A migrated store on each database, for the in-process backend tests (helpers: support/ingest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from trainingplatform_backend.db import create_db_engine, migrate
from trainingplatform_backend.store import Store


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    migrate(database_url)
    engine = create_db_engine(database_url)
    try:
        yield Store(engine)
    finally:
        engine.dispose()
