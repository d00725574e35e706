"""plugin deliveries

Adds ``plugin_deliveries``: which plugin already handled which outbox event, so that a retried
event is not handed again to the plugins that succeeded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 00:00:02.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plugin_deliveries",
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("plugin_id", sa.String(length=255), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "plugin_id", name=op.f("pk_plugin_deliveries")),
    )


def downgrade() -> None:
    op.drop_table("plugin_deliveries")
