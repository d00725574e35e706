"""annotation values as TEXT on SQLite

SQLite gives a column declared ``JSON`` NUMERIC affinity, which converted top-level JSON
numbers on storage (``1.0`` read back as ``1``, integers past 2**63 as lossy floats). The
annotation ``value`` and ``payload`` columns are rebuilt as TEXT, which keeps the JSON text as
written. PostgreSQL (JSONB) is unchanged. Values already converted stay as they were stored.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:00:03.000000+00:00

"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _retype(old: sa.types.TypeEngine[Any], new: sa.types.TypeEngine[Any]) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite cannot change a column's type in place: batch mode copies the table.
    with op.batch_alter_table("workflow_annotations", recreate="always") as batch:
        batch.alter_column("value", type_=new, existing_type=old, existing_nullable=False)
        batch.alter_column("payload", type_=new, existing_type=old, existing_nullable=True)


def upgrade() -> None:
    _retype(sa.JSON(), sa.Text())


def downgrade() -> None:
    _retype(sa.Text(), sa.JSON())
