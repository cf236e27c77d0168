"""Alembic migrations are the schema: upgrading an empty database and `alembic check` agree with the models."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect
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
