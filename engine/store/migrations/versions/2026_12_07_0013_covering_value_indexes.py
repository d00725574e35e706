"""annotations: value indexes cover the run id

Rebuilds the three typed-value indexes of ``workflow_annotations`` (``key``, ``value_*``,
``created_at``) on PostgreSQL with ``INCLUDE (workflow_run_id)``, so counting the runs that
carry a value (``annotations.count_runs``) is an index-only scan instead of a heap fetch per
matching row: 556 ms p50 at 10M rows before. SQLite has no ``INCLUDE``; its indexes stay.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 07:10:00.000000+00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "workflow_annotations"
_VALUES = ("value_text", "value_number", "value_bool")


def _rebuild(include: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in _VALUES:
        name = f"ix_{_TABLE}_key_{column}_created_at"
        op.drop_index(name, table_name=_TABLE)
        op.create_index(name, _TABLE, ["key", column, "created_at"], postgresql_include=include)


def upgrade() -> None:
    _rebuild(["workflow_run_id"])


def downgrade() -> None:
    _rebuild([])
