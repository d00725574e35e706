"""pre-0.8 schema

The side-store as engine versions before 0.8 created it: no annotations, no
``workflow_stages.attempt``, no ``ai_calls.metadata``.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 00:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The column types of engine.store.models, spelled out so that this revision never changes.
JSON_VALUE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamp() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workflow_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workflow_id", sa.String(length=255), nullable=False),
        sa.Column("workflow_name", sa.String(length=255), nullable=False),
        sa.Column("workflow_type", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("completed_at", _timestamp(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("input", JSON_VALUE, nullable=False),
        sa.Column("output", JSON_VALUE, nullable=True),
        sa.Column("config", JSON_VALUE, nullable=False),
        sa.Column("total_cost", sa.Float(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("metadata", JSON_VALUE, nullable=True),
        sa.Column("temporal_workflow_id", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_runs")),
    )
    op.create_index(op.f("ix_workflow_runs_status"), "workflow_runs", ["status"])
    op.create_index(op.f("ix_workflow_runs_workflow_id"), "workflow_runs", ["workflow_id"])

    op.create_table(
        "workflow_stages",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("stage_id", sa.String(length=255), nullable=False),
        sa.Column("stage_name", sa.String(length=255), nullable=False),
        sa.Column("stage_number", sa.Integer(), nullable=False),
        sa.Column("execution_group", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", _timestamp(), nullable=True),
        sa.Column("completed_at", _timestamp(), nullable=True),
        sa.Column("duration_ms", sa.BigInteger(), nullable=True),
        sa.Column("input_data", JSON_VALUE, nullable=True),
        sa.Column("resume_data", JSON_VALUE, nullable=True),
        sa.Column("output_data", JSON_VALUE, nullable=True),
        sa.Column("config", JSON_VALUE, nullable=True),
        sa.Column("suspended_state", JSON_VALUE, nullable=True),
        sa.Column("next_poll_at", _timestamp(), nullable=True),
        sa.Column("poll_interval_ms", sa.BigInteger(), nullable=True),
        sa.Column("max_wait_until", _timestamp(), nullable=True),
        sa.Column("poll_count", sa.Integer(), nullable=False),
        sa.Column("metrics", JSON_VALUE, nullable=True),
        sa.Column("embedding_info", JSON_VALUE, nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_stages_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_stages")),
        sa.UniqueConstraint(
            "workflow_run_id",
            "stage_id",
            name=op.f("uq_workflow_stages_workflow_run_id_stage_id"),
        ),
    )
    op.create_index(op.f("ix_workflow_stages_next_poll_at"), "workflow_stages", ["next_poll_at"])
    op.create_index(op.f("ix_workflow_stages_status"), "workflow_stages", ["status"])
    op.create_index(
        op.f("ix_workflow_stages_workflow_run_id"), "workflow_stages", ["workflow_run_id"]
    )

    op.create_table(
        "workflow_logs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("workflow_stage_id", sa.String(length=64), nullable=True),
        sa.Column("stage_id", sa.String(length=255), nullable=True),
        sa.Column("level", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("metadata", JSON_VALUE, nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_logs_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_stage_id"],
            ["workflow_stages.id"],
            name=op.f("fk_workflow_logs_workflow_stage_id_workflow_stages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_logs")),
    )
    op.create_index(op.f("ix_workflow_logs_workflow_run_id"), "workflow_logs", ["workflow_run_id"])
    op.create_index(
        op.f("ix_workflow_logs_workflow_stage_id"), "workflow_logs", ["workflow_stage_id"]
    )

    op.create_table(
        "workflow_artifacts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("data", JSON_VALUE, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["workflow_run_id"],
            ["workflow_runs.id"],
            name=op.f("fk_workflow_artifacts_workflow_run_id_workflow_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_artifacts")),
        sa.UniqueConstraint(
            "workflow_run_id", "key", name=op.f("uq_workflow_artifacts_workflow_run_id_key")
        ),
    )
    op.create_index(
        op.f("ix_workflow_artifacts_workflow_run_id"), "workflow_artifacts", ["workflow_run_id"]
    )

    op.create_table(
        "ai_calls",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=True),
        sa.Column("stage_id", sa.String(length=255), nullable=True),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("call_type", sa.String(length=64), nullable=False),
        sa.Column("model_key", sa.String(length=255), nullable=False),
        sa.Column("model_id", sa.String(length=255), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_calls")),
    )
    op.create_index(op.f("ix_ai_calls_workflow_run_id"), "ai_calls", ["workflow_run_id"])

    op.create_table(
        "outbox_events",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("workflow_run_id", sa.String(length=64), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON_VALUE, nullable=False),
        sa.Column("causation_id", sa.String(length=255), nullable=False),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column("published_at", _timestamp(), nullable=True),
        sa.Column("retry_count", sa.Integer(), nullable=False),
        sa.Column("dlq_at", _timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint(
            "workflow_run_id",
            "sequence",
            name=op.f("uq_outbox_events_workflow_run_id_sequence"),
        ),
    )
    op.create_index(op.f("ix_outbox_events_published_at"), "outbox_events", ["published_at"])

    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("command_type", sa.String(length=64), nullable=False),
        sa.Column("result", JSON_VALUE, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint(
            "key", "command_type", name=op.f("uq_idempotency_keys_key_command_type")
        ),
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; children before parents.
    op.drop_table("idempotency_keys")
    op.drop_table("outbox_events")
    op.drop_table("ai_calls")
    op.drop_table("workflow_artifacts")
    op.drop_table("workflow_logs")
    op.drop_table("workflow_stages")
    op.drop_table("workflow_runs")
