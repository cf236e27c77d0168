"""jobs.dispatch: whether the backend hands the job to a trainer (CreateJob's `dispatch`)

A job created with dispatch=false that its own reporter moved to QUEUED (a batch-queue wrapper saying it waits) was
taken by the dispatcher, which knew only the status, and trained twice. Existing rows are marked true: the
dispatcher keeps treating them as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 07:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dispatch", sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("dispatch")
