"""float columns keep every double exactly on SQLite (-0.0 included)

SQLite writes an integral value into a column of REAL affinity as an integer, which loses the sign of -0.0. The
float columns become columns without a declared type (no affinity; `models.ExactDouble`): their values stay REAL
numbers, stored with their 8 bytes as they are. SQLite cannot change a column's type in place, so each table is
copied once (batch mode). PostgreSQL's `double precision` already keeps every double: nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 17:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import trainingplatform_backend.models
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, its float columns, whether it is a WITHOUT ROWID table)
_TABLES = (
    ("metrics", ("value", "wall_time"), True),
    ("logs", ("wall_time",), True),
    ("epoch_summaries", ("duration_seconds",), False),
    ("epoch_summary_metrics", ("value",), False),
)
_NULLABLE = {("metrics", "value"), ("epoch_summary_metrics", "value")}


def _retype(to_exact: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, columns, without_rowid in _TABLES:
        table_kwargs = {"sqlite_with_rowid": False} if without_rowid else {}
        with op.batch_alter_table(table, recreate="always", table_kwargs=table_kwargs) as batch_op:
            for column in columns:
                new: sa.types.TypeEngine[float] = (
                    trainingplatform_backend.models.ExactDouble() if to_exact else sa.Float(precision=53)
                )
                batch_op.alter_column(column, type_=new, existing_nullable=(table, column) in _NULLABLE)


def upgrade() -> None:
    _retype(to_exact=True)


def downgrade() -> None:
    _retype(to_exact=False)
