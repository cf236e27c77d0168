"""Alembic migrations are the schema: upgrading an empty database and `alembic check` agree with the models."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from support.backend import VENV_BIN, BackendProcess, free_port
from trainingplatform_backend import db


def test_migrations_match_the_models(database_url: str):
    db.migrate(database_url)
    command.check(db.alembic_config(database_url))  # raises when autogenerate finds any difference
    tables = set(inspect(create_engine(database_url)).get_table_names())
    assert {
        "jobs",
        "metrics",
        "logs",
        "status_events",
        "ingest_cursors",
        "epoch_summaries",
        "job_artifacts",
        "alembic_version",
    } <= tables


def test_migrating_twice_is_a_no_op(database_url: str):
    db.migrate(database_url)
    db.migrate(database_url)
    command.check(db.alembic_config(database_url))


def _serve_without_migrating(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`tp-backend --no-migrate` on `database_url`: what it printed and its exit code (it must not stay up)."""
    env = {**os.environ, "DATABASE_URL": database_url, "TP_DATA_DIR": str(tmp_path / "data")}
    return subprocess.run(
        [str(VENV_BIN / "tp-backend"), "--no-migrate", "--listen", f"127.0.0.1:{free_port()}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_backend_that_does_not_migrate_refuses_a_database_without_the_schema(database_url: str, tmp_path: Path):
    # Before, it reported SERVING and answered every call UNAVAILABLE "the database is unavailable; retry later".
    result = _serve_without_migrating(database_url, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "has no schema" in output and "tp-backend migrate" in output, output


def test_a_backend_that_does_not_migrate_refuses_a_database_behind_its_migrations(database_url: str, tmp_path: Path):
    db.migrate(database_url)
    head = ScriptDirectory.from_config(db.alembic_config(database_url)).get_current_head()
    command.downgrade(db.alembic_config(database_url), "-1")
    result = _serve_without_migrating(database_url, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"needs {head}" in output and "tp-backend migrate" in output, output


def test_a_migrated_database_serves_without_migrating(database_url: str, tmp_path: Path):
    db.migrate(database_url)
    backend = BackendProcess(database_url, tmp_path / "data", extra_args=["--no-migrate"])
    backend.start()
    try:
        job_id, _ = backend.create_job()
        assert job_id
    finally:
        backend.stop()
