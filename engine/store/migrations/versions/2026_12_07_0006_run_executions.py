"""run executions: the last execution's start and duration; annotation stage references

A rerun keeps the run's first ``started_at``; ``execution_started_at`` records when the last
execution began (NULL until a rerun: then ``started_at``), and ``execution_duration_ms`` how
long it took, next to ``duration_ms`` (creation to completion: how long the run has existed).
``workflow_annotations.stage_record_ref`` keeps the id of the stage record that produced a row
when a rerun deletes that record (the foreign key ``workflow_stage_record_id`` is NULLed).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 00:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("workflow_runs") as batch:
        batch.add_column(sa.Column("execution_started_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("execution_duration_ms", sa.BigInteger()))
    with op.batch_alter_table("workflow_annotations") as batch:
        batch.add_column(sa.Column("stage_record_ref", sa.String(length=64)))


def downgrade() -> None:
    with op.batch_alter_table("workflow_annotations") as batch:
        batch.drop_column("stage_record_ref")
    with op.batch_alter_table("workflow_runs") as batch:
        batch.drop_column("execution_duration_ms")
        batch.drop_column("execution_started_at")
