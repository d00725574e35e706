"""workflow_stages: keep only the indexes a query uses

Every stage commit updates one stage record's status and, for a sequential stage, inserts the
next one; each of the table's six indexes took an entry for both. Three served no query:
``status`` (every status read is scoped to a run), ``workflow_run_id`` (the leading column of
the ``(workflow_run_id, stage_id)`` unique index, which also serves the foreign key's cascade)
and ``next_poll_at`` (Temporal's timers replaced the poller that read it). And
``(status, waiting_since)``, which only the approvals inbox reads, now holds only the records
that wait (``waiting_since IS NOT NULL``).

Besides the writes, an index that led with ``status`` let PostgreSQL, before it had statistics
for the table (a new database, until autovacuum's first ``ANALYZE``), find the stage the
commit updates through it: reading the entry of every RUNNING stage of every run, 460 a
commit over 400 concurrent runs. With the unique indexes left, the record is one probe.
On PostgreSQL, 400 concurrent runs' sequential stage commits (three interleaved pairs): the
server's CPU per commit went from 650-825 to 450-500 µs, the commit from 1.5-1.8 to 1.2-1.4 ms.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 03:00:00.000000+00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "workflow_stages"
_WAITING = "ix_workflow_stages_status_waiting_since"
_UNUSED = {
    "ix_workflow_stages_status": ["status"],
    "ix_workflow_stages_workflow_run_id": ["workflow_run_id"],
    "ix_workflow_stages_next_poll_at": ["next_poll_at"],
}


def upgrade() -> None:
    for name in _UNUSED:
        op.drop_index(name, table_name=_TABLE)
    op.drop_index(_WAITING, table_name=_TABLE)
    waits = sa.text("waiting_since IS NOT NULL")
    op.create_index(
        _WAITING,
        _TABLE,
        ["status", "waiting_since"],
        postgresql_where=waits,
        sqlite_where=waits,
    )


def downgrade() -> None:
    op.drop_index(_WAITING, table_name=_TABLE)
    op.create_index(_WAITING, _TABLE, ["status", "waiting_since"])
    for name, columns in _UNUSED.items():
        op.create_index(name, _TABLE, columns)
