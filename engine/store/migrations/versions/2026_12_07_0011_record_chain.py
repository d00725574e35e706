"""record chain

Adds the tamper-evident record chain (``engine.store.chain``): the ``workflow_chain_links``
table, the head and length of each run's chain on ``workflow_runs``, and chains every existing
run (its identity, its annotations in the order they were written, its stages' current
outcomes), so ``wfe verify`` checks runs written before it too.

Revision ID: 0011
Revises: 0007
Create Date: 2026-12-07 04:30:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    from engine.store.chain import chain_existing

    with op.batch_alter_table("workflow_runs") as batch_op:
        batch_op.add_column(sa.Column("chain_head", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("chain_length", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "workflow_chain_links",
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("record_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_chain_links_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "workflow_run_id", "sequence", name=op.f("pk_workflow_chain_links")
        ),
    )
    connection = op.get_bind()
    run_ids = connection.execute(sa.text("SELECT id FROM workflow_runs ORDER BY id")).scalars()
    for run_id in list(run_ids):
        chain_existing(connection, run_id)


def downgrade() -> None:
    op.drop_table("workflow_chain_links")
    with op.batch_alter_table("workflow_runs") as batch_op:
        batch_op.drop_column("chain_length")
        batch_op.drop_column("chain_head")
