"""CLI limits are validated before anything runs: exit code 2, one ``error:`` line, no
traceback (a 20-digit ``--limit`` once reached the database and overflowed there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import assert_one_line_error, invoke

HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["annotations", "list", "run-1", "--limit", HUGE],
            f"--limit must be between 1 and 1000, got {HUGE}",
        ),
        (["annotations", "list", "run-1", "--limit", "0"], "--limit must be between 1 and 1000"),
        (["annotations", "list", "run-1", "--limit", "1001"], "--limit must be between 1 and 1000"),
        (["annotations", "list", "run-1", "--attempt", HUGE], "--attempt must be between 0 and"),
        (["annotations", "list", "run-1", "--attempt", "-1"], "--attempt must be between 0 and"),
        (["annotations", "migrate-legacy", "--batch-size", "0"], "--batch-size must be between"),
        (["annotations", "migrate-legacy", "--batch-size", HUGE], "--batch-size must be between"),
        (["outbox", "flush", "--max-events", HUGE], "max_events"),
    ],
)
def test_out_of_range_limits_are_one_line_errors(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'absent.db'}"
    result = invoke([*args, "--database-url", url])
    assert_one_line_error(result, fragment)
