"""How the CLI and the viewer show engine values to people: times, durations, actors, errors.

One set of rules for both, so that a run reads the same in ``wfe run show`` and on its page.
Only the mark for "no value" is the caller's choice (``missing``): the CLI keeps to ASCII
``-`` so that its tables survive any terminal encoding, while the pages use the ``—`` their
templates already show in other empty cells.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from engine.core.records import Annotation

__all__ = [
    "describe_validation",
    "format_actor",
    "format_duration",
    "format_time",
    "value_text",
]


def format_time(moment: datetime | None, *, date: bool = True, missing: str = "-") -> str:
    """``2026-11-26T10:00:01.123Z`` (UTC, ISO 8601), or ``10:00:01.123`` without the date.

    A time without a zone is taken as UTC: that is how the store keeps them.
    """
    if moment is None:
        return missing
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    if date:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_duration(milliseconds: int | float | None, *, missing: str = "-") -> str:
    """``35 ms``, ``1.24 s``, ``3 min 05 s`` or ``2 h 01 min``."""
    if milliseconds is None:
        return missing
    if milliseconds < 1000:
        return f"{int(milliseconds)} ms"
    seconds = milliseconds / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def format_actor(annotation: Annotation, *, missing: str = "-") -> str:
    """``kind:id@version`` of the annotation's actor (``?`` for an unknown part)."""
    if annotation.actor_kind is None and annotation.actor_id is None:
        return missing
    actor = f"{annotation.actor_kind or '?'}:{annotation.actor_id or '?'}"
    return f"{actor}@{annotation.actor_version}" if annotation.actor_version else actor


def value_text(value: Any) -> str:
    """A stored value as text: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def describe_validation(error: ValidationError) -> str:
    """``field.path: message; …`` for each problem pydantic found (``(root)`` for the model)."""
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(root)"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)
