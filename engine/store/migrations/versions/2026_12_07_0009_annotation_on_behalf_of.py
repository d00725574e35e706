"""annotations: on behalf of

Adds ``on_behalf_of_kind``, ``on_behalf_of_id`` and ``on_behalf_of_version`` to
``workflow_annotations``. The HTTP API writes annotations as the caller's token principal
(``actor_*``); an actor the caller names in its request is kept here, so a caller can say
whom it acted for but never write in someone else's name. Existing rows get NULLs.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-07 00:00:09.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = [
    ("on_behalf_of_kind", 64),
    ("on_behalf_of_id", 255),
    ("on_behalf_of_version", 255),
]


def upgrade() -> None:
    with op.batch_alter_table("workflow_annotations") as batch:
        for name, length in _COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length=length), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workflow_annotations") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
