"""jobs.dispatch_busy_at: when a trainer last answered busy to the job's dispatch (TP_DISPATCH_TIMEOUT_S counts from
then)

The dispatch timeout counted from the job's creation even while every trainer answered RESOURCE_EXHAUSTED, so a job
queued behind a training longer than TP_DISPATCH_TIMEOUT_S failed although its trainers were healthy.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 08:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import trainingplatform_backend.models
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dispatch_busy_at", trainingplatform_backend.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("dispatch_busy_at")
