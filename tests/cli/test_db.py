"""``wfe db upgrade|downgrade`` on brand-new databases, and commands on a wrong schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.store.migrate import head_revision
from tests.cli.support import Wfe, assert_one_line_error
from tests.conftest import BACKENDS


@pytest.mark.parametrize("empty_database_url", BACKENDS, indirect=True)
async def test_upgrade_and_downgrade(wfe: Wfe, empty_database_url: str) -> None:
    url = ["--database-url", empty_database_url]

    # A read-only command refuses an unmigrated database and says what to run.
    result = await wfe("run", "show", "r1", *url)
    if empty_database_url.startswith("sqlite"):
        assert_one_line_error(result, "does not exist", "wfe db upgrade")
    else:
        assert_one_line_error(result, "wfe db upgrade")

    result = await wfe("db", "upgrade", *url, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["previous_revision"] is None
    assert report["revision"] == head_revision()
    assert "Migrating" in result.stderr  # progress goes to stderr, stdout is pure JSON

    # At head, commands work: an unknown run is a one-line error, not a schema complaint.
    assert_one_line_error(await wfe("run", "show", "r1", *url), "Run r1 not found")
    again = await wfe("db", "upgrade", "head", *url)  # idempotent, table output
    assert again.exit_code == 0, again.stderr
    assert f"is at revision {head_revision()}" in again.stdout

    result = await wfe("db", "downgrade", "base", *url, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["revision"] is None
    assert_one_line_error(await wfe("run", "show", "r1", *url), "empty database", "wfe db upgrade")

    # The environment variable works like the option.
    result = await wfe("db", "upgrade", "--json", env={"WFE_DATABASE_URL": empty_database_url})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["revision"] == head_revision()


async def test_db_usage_and_connection_errors(wfe: Wfe, tmp_path: Path) -> None:
    missing = await wfe("db", "downgrade", "--database-url", f"sqlite+aiosqlite:///{tmp_path}/x.db")
    assert missing.exit_code == 2  # REVISION is required (a click usage error)
    assert not (tmp_path / "x.db").exists()

    unreachable = "postgresql+psycopg://someone:secret@127.0.0.1:1/nothing"
    result = await wfe("db", "upgrade", "--database-url", unreachable)
    assert_one_line_error(result, "cannot reach database", "127.0.0.1:1")
    assert "secret" not in result.stderr  # the password is masked

    result = await wfe("db", "upgrade", "--database-url", "mysql://localhost/x")
    assert_one_line_error(result, "bad --database-url")
