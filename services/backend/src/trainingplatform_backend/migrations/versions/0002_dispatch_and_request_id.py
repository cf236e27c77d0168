"""jobs: CreateJob's idempotency key, and the durable dispatcher's columns

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 13:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import trainingplatform_backend.models
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("request_hash", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("dispatch_attempt", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("dispatch_attempt_address", sa.String(length=250), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column(
                "dispatch_claimed_until", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(sa.Column("dispatch_reasons", sa.Text(), nullable=False, server_default=""))
        batch_op.create_index(batch_op.f("ix_jobs_request_id"), ["request_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_request_id"))
        batch_op.drop_column("dispatch_reasons")
        batch_op.drop_column("dispatch_claimed_until")
        batch_op.drop_column("dispatch_attempt_address")
        batch_op.drop_column("dispatch_attempt")
        batch_op.drop_column("request_hash")
        batch_op.drop_column("request_id")
