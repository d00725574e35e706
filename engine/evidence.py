"""The tamper-evident record chain's definitions: canonical JSON, link hashes, the result of
a check. Pure functions with no database, so that a third party (and ``wfe verify --bundle``)
can recompute a chain from what a bundle holds.

Canonical JSON (the text a link hashes):

- objects with their keys sorted (by code point), no whitespace at all (``,`` and ``:``);
- strings as JSON writes them, non-ASCII characters kept as themselves (not ``\\u`` escapes),
  the text encoded as UTF-8;
- ``true``, ``false``, ``null``;
- numbers: an integer, or a float with an integral value, in plain decimal digits (``1.0`` is
  ``1``, ``1e300`` is ``1`` followed by 300 zeros); any other float as the shortest decimal
  that reads back as the same double (Python's ``repr``, JSON's usual form: ``0.1``,
  ``1.5e-07``). PostgreSQL's ``jsonb`` rewrites numbers this way (``1e3`` comes back ``1000``),
  and this form is the same whichever the database gave back;
- timestamps (record fields, not JSON values) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC.

A link's hash is ``sha256(previous link's hash ‖ canonical JSON of the record)`` in lowercase
hex, the previous hash taken as its 64 hex characters (the empty string before the first link),
both as UTF-8.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "BadRecord",
    "ChainVerification",
    "canonical_json",
    "digest",
    "link_hash",
    "normal",
    "timestamp",
]


def normal(value: Any) -> Any:
    """``value`` with its numbers and timestamps in canonical form (as JSON would read back
    the canonical text)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        if value.is_integer():
            return int(Decimal(repr(value)))
        return value
    if isinstance(value, dict):
        return {str(k): normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    if isinstance(value, datetime):
        return timestamp(value)
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (see the module doc)."""
    return json.dumps(
        normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON, lowercase hex (a stage output's digest)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def link_hash(previous: str | None, body: str) -> str:
    """The hash of a link whose canonical record is ``body``, after ``previous``."""
    return hashlib.sha256(((previous or "") + body).encode()).hexdigest()


def timestamp(value: datetime) -> str:
    """A record timestamp in its canonical form (UTC, microseconds, ``Z``)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class BadRecord:
    """The first record of a run whose chain does not check out."""

    sequence: int | None
    """Position in the chain (1 is the run itself), or None for a record outside it."""
    kind: str
    """``run``, ``annotation``, ``stage``, ``rerun``, or ``head`` (the run's chain head)."""
    record_id: str | None
    label: str | None
    """The annotation's key or the stage's id, when there is one."""
    problem: str
    holds: Any = None
    """What the record holds now (its canonical fields), to show a reader."""

    def describe(self) -> str:
        """One line naming the record and what is wrong with it."""
        where = f"link {self.sequence}: " if self.sequence is not None else ""
        name = f" {self.label!r}" if self.label else ""
        ident = f" ({self.record_id})" if self.record_id else ""
        return f"{where}{self.kind}{name}{ident}: {self.problem}"


@dataclass(frozen=True)
class ChainVerification:
    """What ``kernel.verify(run_id)`` found: ``ok`` with the links checked, or the first bad
    record."""

    workflow_run_id: str
    ok: bool
    links_checked: int
    head: str | None
    first_bad: BadRecord | None = None
    links: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """The links in order (sequence, kind, record id, hash): what an export bundles."""

    def to_json(self) -> dict[str, Any]:
        """The verification as JSON (``wfe verify --json``)."""
        bad = self.first_bad
        return {
            "workflow_run_id": self.workflow_run_id,
            "ok": self.ok,
            "links_checked": self.links_checked,
            "head": self.head,
            "first_bad": None
            if bad is None
            else {
                "sequence": bad.sequence,
                "kind": bad.kind,
                "record_id": bad.record_id,
                "label": bad.label,
                "problem": bad.problem,
                "holds": bad.holds,
            },
        }
