"""record chain: cheaper links

Makes appending a link cost less, since a stage commit with ten annotations appends eleven:

- drops the foreign key from ``workflow_chain_links`` to ``workflow_runs``: every link is
  appended under its run's row lock (``engine.store.chain``), so the run exists when its links
  go in, and the key only added a referential check per link. Nothing deletes runs; a run
  deleted by hand leaves its links, which name it;
- on SQLite, makes the table ``WITHOUT ROWID``: its rows live in the primary key's b-tree,
  instead of a rowid table beside the key's index (one b-tree written per link, not two);
- on PostgreSQL, leaves a fifth of each ``workflow_runs`` page free (``fillfactor = 80``):
  every stage commit now moves the run's chain head, and an update that finds no room on the
  row's page writes a new entry in each of the table's four indexes. Packed full, 29% of those
  updates did (``pg_stat_user_tables``, the stage-commit benchmark).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 07:00:00.000000+00:00

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = "fk_workflow_chain_links_workflow_run_id_workflow_runs"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE workflow_runs SET (fillfactor = 80)")
    with op.batch_alter_table(
        "workflow_chain_links", recreate="auto", table_kwargs={"sqlite_with_rowid": False}
    ) as batch_op:
        batch_op.drop_constraint(_KEY, type_="foreignkey")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE workflow_runs RESET (fillfactor)")
    with op.batch_alter_table(
        "workflow_chain_links", recreate="auto", table_kwargs={"sqlite_with_rowid": True}
    ) as batch_op:
        batch_op.create_foreign_key(
            _KEY, "workflow_runs", ["workflow_run_id"], ["id"], ondelete="CASCADE"
        )
