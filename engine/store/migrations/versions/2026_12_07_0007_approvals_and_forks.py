"""approval waits and forked stage records

A stage record says whom an approval stage waits for (``waiting_for``) and since when
(``waiting_since``), so the approvals inbox is one index range across runs; a record copied
into a forked run names the record it was copied from (``copied_from``).

Revision ID: 0007
Revises: 0009
Create Date: 2026-12-07 00:00:07.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
# The lead re-chains this after "0009" (and the other helpers' revisions) when merging.
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_stages") as batch:
        batch.add_column(sa.Column("waiting_for", sa.String(255), nullable=True))
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("copied_from", sa.String(64), nullable=True))
    op.create_index(
        "ix_workflow_stages_status_waiting_since",
        "workflow_stages",
        ["status", "waiting_since"],
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_stages_status_waiting_since", table_name="workflow_stages")
    with op.batch_alter_table("workflow_stages") as batch:
        batch.drop_column("copied_from")
        batch.drop_column("waiting_since")
        batch.drop_column("waiting_for")
