"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-30 09:13:38.629695
"""

from collections.abc import Sequence

import sqlalchemy as sa
import trainingplatform_backend.models
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("framework", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=250), nullable=False),
        sa.Column("model_name", sa.String(length=250), nullable=False),
        sa.Column(
            "model_config", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "dataset_config", sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "training_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "advanced_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_detail", sa.Text(), nullable=False),
        sa.Column("created_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("trainer_address", sa.String(length=250), nullable=False),
        sa.Column("trainer_run_id", sa.String(length=250), nullable=False),
        sa.Column("mlflow_run_id", sa.String(length=250), nullable=False),
        sa.Column("mlflow_tracking_uri", sa.String(length=1000), nullable=False),
        sa.Column("telemetry_token_hash", sa.String(length=64), nullable=False),
        sa.Column("status_sequence", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_jobs_job_id")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_framework"), ["framework"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)

    op.create_table(
        "logs",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("wall_time", sa.Float(precision=53), nullable=False),
        sa.Column("source", sa.String(length=250), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_pk", "sequence", name=op.f("pk_logs")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "metrics",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=True),
        sa.Column("wall_time", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("job_pk", "sequence", name=op.f("pk_metrics")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "epoch_summaries",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Float(precision=53), nullable=False),
        sa.Column("end_time", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"], ["jobs.id"], name=op.f("fk_epoch_summaries_job_pk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_pk", "epoch", name=op.f("pk_epoch_summaries")),
    )
    op.create_table(
        "epoch_summary_metrics",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=250), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_pk"], ["jobs.id"], name=op.f("fk_epoch_summary_metrics_job_pk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_pk", "epoch", "key", name=op.f("pk_epoch_summary_metrics")),
    )
    op.create_table(
        "ingest_cursors",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("stream", sa.String(length=16), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("committed_count", sa.BigInteger(), nullable=False),
        sa.Column("duplicate_count", sa.BigInteger(), nullable=False),
        sa.Column("missing_count", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"], ["jobs.id"], name=op.f("fk_ingest_cursors_job_pk_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_pk", "stream", name=op.f("pk_ingest_cursors")),
    )
    op.create_table(
        "job_artifacts",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("name", sa.String(length=250), nullable=False),
        sa.Column("uri", sa.String(length=2000), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_job_artifacts_job_pk_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_pk", "name", name=op.f("pk_job_artifacts")),
    )
    op.create_table(
        "status_events",
        sa.Column("job_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=False),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("created_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_pk"], ["jobs.id"], name=op.f("fk_status_events_job_pk_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_pk", "sequence", name=op.f("pk_status_events")),
    )


def downgrade() -> None:
    op.drop_table("status_events")
    op.drop_table("job_artifacts")
    op.drop_table("ingest_cursors")
    op.drop_table("epoch_summary_metrics")
    op.drop_table("epoch_summaries")
    op.drop_table("metrics")
    op.drop_table("logs")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_framework"))

    op.drop_table("jobs")
