"""jobs.mlflow_tracking_uri: 2000 characters, the limit ReportRunInfo checks

It was 1000: on PostgreSQL a longer URI that the call had accepted failed INTERNAL, and the job's final status waited
behind the failing call.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("mlflow_tracking_uri", existing_type=sa.String(length=1000), type_=sa.String(length=2000))


def downgrade() -> None:
    # A URI longer than 1000 characters would not fit back: it is cut, as the old column could not hold it.
    op.execute("UPDATE jobs SET mlflow_tracking_uri = substr(mlflow_tracking_uri, 1, 1000)")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("mlflow_tracking_uri", existing_type=sa.String(length=2000), type_=sa.String(length=1000))
