"""0.8 annotations

Adds ``workflow_annotations`` (provenance attributes), ``workflow_stages.attempt`` and
``ai_calls.metadata``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:01.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column types of engine.store.models, spelled out so that this revision never changes.
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
# Byte-order collation on PostgreSQL so that a key prefix is an index range scan, as on SQLite.
ANNOTATION_KEY = sa.String(length=255).with_variant(
    sa.String(length=255, collation="C"), "postgresql"
)

# Longer than PostgreSQL's 63 characters: as a naming-convention name (op.f) it is truncated
# with a hash suffix on PostgreSQL exactly as the models' metadata truncates it, and kept whole
# on SQLite.
STAGE_RECORD_FK = "fk_workflow_annotations_workflow_stage_record_id_workflow_stages"

ANNOTATION_INDEXES = [
    ("ix_workflow_annotations_workflow_run_id_key", ["workflow_run_id", "key"]),
    ("ix_workflow_annotations_workflow_run_id_created_at", ["workflow_run_id", "created_at"]),
    ("ix_workflow_annotations_workflow_run_id_scope", ["workflow_run_id", "scope"]),
    ("ix_workflow_annotations_workflow_run_id_actor_id", ["workflow_run_id", "actor_id"]),
    ("ix_workflow_annotations_key_value_text_created_at", ["key", "value_text", "created_at"]),
    (
        "ix_workflow_annotations_key_value_number_created_at",
        ["key", "value_number", "created_at"],
    ),
    ("ix_workflow_annotations_key_value_bool_created_at", ["key", "value_bool", "created_at"]),
]


def upgrade() -> None:
    # Existing stages were all first attempts. SQLite adds both columns in place (ALTER TABLE
    # ADD COLUMN), without copying the tables.
    with op.batch_alter_table("workflow_stages") as batch_op:
        batch_op.add_column(sa.Column("attempt", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("ai_calls") as batch_op:
        batch_op.add_column(sa.Column("metadata", JSON_VALUE, nullable=True))

    op.create_table(
        "workflow_annotations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("workflow_stage_record_id", sa.String(length=64), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=64), nullable=False),
        sa.Column("scope_id", sa.String(length=255), nullable=True),
        sa.Column("actor_kind", sa.String(length=64), nullable=True),
        sa.Column("actor_id", sa.String(length=255), nullable=True),
        sa.Column("actor_version", sa.String(length=255), nullable=True),
        sa.Column("key", ANNOTATION_KEY, nullable=False),
        sa.Column("value", JSON_VALUE, nullable=False),
        sa.Column("value_text", sa.String(length=1024), nullable=True),
        sa.Column("value_number", sa.Float(), nullable=True),
        sa.Column("value_bool", sa.Boolean(), nullable=True),
        sa.Column("payload", JSON_VALUE, nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_annotations_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_stage_record_id"],
            ["workflow_stages.id"],
            name=op.f(STAGE_RECORD_FK),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_annotations")),
        sa.UniqueConstraint(
            "workflow_run_id",
            "key",
            "idempotency_key",
            name=op.f("uq_workflow_annotations_workflow_run_id_key_idempotency_key"),
        ),
    )
    for name, columns in ANNOTATION_INDEXES:
        op.create_index(op.f(name), "workflow_annotations", columns)


def downgrade() -> None:
    for name, _columns in reversed(ANNOTATION_INDEXES):
        op.drop_index(op.f(name), table_name="workflow_annotations")
    op.drop_table("workflow_annotations")

    # SQLite copies these two tables without the column (migrate runs it with foreign keys
    # off, so dropping the old workflow_stages does not cascade to the logs).
    with op.batch_alter_table("ai_calls") as batch_op:
        batch_op.drop_column("metadata")
    with op.batch_alter_table("workflow_stages") as batch_op:
        batch_op.drop_column("attempt")
