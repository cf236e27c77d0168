"""Alembic environment: runs the backend's migrations on the URL given in the Alembic config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from trainingplatform_backend.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Runs the migrations on a live connection (the only mode the backend uses)."""
    connectable = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `tp-backend migrate`")
run_migrations_online()
