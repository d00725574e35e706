"""lookup indexes

Indexes ``workflow_runs.created_at`` (runs are listed newest first: without it every listing
sorted the whole table) and ``workflow_annotations.workflow_stage_record_id`` (a rerun's update
of its stages' annotations and the ``ON DELETE SET NULL`` of a deleted stage record scanned the
biggest table).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:00:00.000000+00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_workflow_runs_created_at"), "workflow_runs", ["created_at"])
    op.create_index(
        op.f("ix_workflow_annotations_workflow_stage_record_id"),
        "workflow_annotations",
        ["workflow_stage_record_id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_workflow_annotations_workflow_stage_record_id"),
        table_name="workflow_annotations",
    )
    op.drop_index(op.f("ix_workflow_runs_created_at"), table_name="workflow_runs")
