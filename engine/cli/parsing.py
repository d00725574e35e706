"""Reading the values of ``wfe`` options: JSON, ``key=value`` items, times, ranges.

Each reader stops the command with one ``error:`` line naming the option at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from engine.cli.errors import fail
from engine.core.key_values import parse_key_value

__all__ = ["check_range", "parse_attributes", "parse_json", "parse_time"]


def check_range(value: int | None, what: str, low: int, high: int) -> None:
    """Stop with one ``error:`` line (exit 2) unless ``value`` is ``None`` or in ``low..high``.

    A huge number must not reach the database (an overflow traceback there).
    """
    if value is not None and not low <= value <= high:
        shown = str(value) if len(str(value)) <= 30 else f"{str(value)[:27]}..."
        fail(f"{what} must be between {low} and {high}, got {shown}")


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, or a :class:`~engine.cli.errors.CliError` naming the option."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")


def parse_attributes(items: Iterable[str], what: str = "annotation") -> dict[str, Any]:
    """``key=value`` items as a dict; a value is JSON when it parses as JSON, else a string."""
    attributes: dict[str, Any] = {}
    for item in items:
        try:
            key, value = parse_key_value(item)
        except ValueError:
            fail(f"{what} must be key=value, got {item!r}")
        attributes[key] = value
    return attributes


def parse_time(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (``2026-11-26T10:00:00Z``; without a zone: UTC), or ``None``."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{what} must be an ISO 8601 time such as 2026-11-26T10:00:00Z, got {text!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
