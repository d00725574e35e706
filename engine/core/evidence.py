r"""The tamper-evident record chain's definitions: canonical JSON, link hashes, a check's result.

Pure functions with no database, so that a third party (and ``wfe verify --bundle``) can
recompute a chain from what a bundle holds.

Canonical JSON (the text a link hashes):

- objects with their keys sorted (by code point), no whitespace at all (``,`` and ``:``);
- strings as JSON writes them, non-ASCII characters kept as themselves (not ``\u`` escapes),
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

The records one transaction writes together (a stage's outcome and its annotations, a new run
and its annotations) share one link, of kind ``write``. Its canonical JSON is the array of
those records, in the order written, each one either:

- the record itself, for a record that moves on or goes later (a stage outcome, a rerun), so
  the link keeps what it was; or
- a reference ``{"id":…,"kind":…,"sha256":…}`` to a record that never changes (the run, an
  annotation), holding the sha256 of the record's canonical JSON (lowercase hex), so that a
  change to the record is found by its own digest.

A write of one record has that record's own link.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

__all__ = [
    "BadRecord",
    "ChainVerification",
    "canonical_json",
    "canonical_record",
    "digest",
    "encode_canonical",
    "link_hash",
    "link_records",
    "normal",
    "reference",
    "text_digest",
    "timestamp",
]


_EXACT = 2.0**53
"""Up to here every integer is a float of its own (and below 1e16, ``repr`` writes no exponent)."""


def normal(value: Any) -> Any:
    """``value`` with its numbers and timestamps in canonical form.

    That is, as JSON would read back the canonical text.
    """
    # Dispatch on the exact type first: this runs for every field of every link a commit
    # writes (engine.store.chain), so the common cases return at once.
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        if not value.is_integer():
            return value
        # Below 2**53 an integral float is the integer its shortest decimal reads: int() is it,
        # without the Decimal (1.1 µs of a typed column's 1.3).
        return int(value) if -_EXACT <= value <= _EXACT else int(Decimal(repr(value)))
    if kind is dict:
        return {k if type(k) is str else str(k): normal(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [normal(v) for v in value]
    if isinstance(value, datetime):
        return timestamp(value)
    if isinstance(value, bool | int | str):  # subclasses (enums)
        return value
    if isinstance(value, float):
        return normal(float(value))
    if isinstance(value, dict):
        return normal(dict(value))
    if isinstance(value, list | tuple):
        return [normal(v) for v in value]
    raise TypeError(f"{type(value).__name__} has no canonical JSON form")


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (see the module doc)."""
    # Scalars without the JSON encoder: its set-up per call (0.9 µs) cost more than the
    # encoding, and a link's record is mostly scalars.
    kind = type(value)
    if kind is str:
        return encode_basestring(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if kind is float:
        number = normal(value)
        return int.__repr__(number) if type(number) is int else float.__repr__(number)
    return encode_canonical(normal(value))


# One encoder: json.dumps with options builds a new one per call, which cost more than the
# encoding of a link's record.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _c_encoder() -> Any:
    """The C encoder under ``_ENCODER``, made once.

    ``JSONEncoder.encode`` makes it again on every call (0.7 of the 1.6 µs it took for a
    stage's small output), and a stage commit encodes a few values per link. ``None`` where
    the interpreter has no C accelerator.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return None
    return make(
        None,  # no circular-reference markers: normal() built the value, with no cycles
        _ENCODER.default,
        encode_basestring,
        None,
        ":",
        ",",
        True,  # sort_keys
        False,  # skipkeys
        False,  # allow_nan
    )


_C_ENCODE = _c_encoder()


def encode_canonical(value: Any) -> str:
    """The canonical text of a value already in canonical form (:func:`normal`'s result)."""
    if _C_ENCODE is None:  # pragma: no cover - CPython has it
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


_FLAT = frozenset((str, int, bool, type(None)))


def canonical_record(fields: dict[str, Any]) -> str:
    """``canonical_json(fields)`` for a record's fields (a flat object with string keys).

    It normalizes only the values that need it: this runs for every link a commit writes.
    """
    flat = _FLAT
    return encode_canonical(
        {name: v if type(v) in flat else normal(v) for name, v in fields.items()}
    )


def digest(value: Any) -> str:
    """sha256 of ``value``'s canonical JSON, lowercase hex (a stage output's digest)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def text_digest(text: str) -> str:
    """sha256 of a canonical text, lowercase hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def reference(kind: str, record_id: str, text: str) -> str:
    """The canonical JSON of a write link's reference to a record whose canonical JSON is ``text``.

    Written out: the keys are in order already, and a commit writes ten of these or more.
    """
    record, of_kind = encode_basestring(record_id), encode_basestring(kind)
    return f'{{"id":{record},"kind":{of_kind},"sha256":"{text_digest(text)}"}}'


def link_records(link: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """The kind and id of each record a link (a ``workflow_chain_links`` row) covers, in order.

    A rerun's record is the run's: its body names no id of its own.
    """
    if link["kind"] != "write":
        return [(str(link["kind"]), link["record_id"])]
    return [(str(m.get("kind")), m.get("id")) for m in json.loads(link["body"] or "[]")]


def link_hash(previous: str | None, body: str) -> str:
    """The hash of a link whose canonical record is ``body``, after ``previous``."""
    return hashlib.sha256(((previous or "") + body).encode()).hexdigest()


def timestamp(value: datetime) -> str:
    """A record timestamp in its canonical form (UTC, microseconds, ``Z``)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    elif value.utcoffset():
        value = value.astimezone(UTC)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


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
    """What ``kernel.verify(run_id)`` found.

    ``ok`` with the links checked, or the first bad record.
    """

    workflow_run_id: str
    ok: bool
    links_checked: int
    head: str | None
    first_bad: BadRecord | None = None
    links: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """The links in order (sequence, kind, record id, hash): what an export bundles."""
    records_checked: int = 0
    """The records the checked links cover (a write's link covers each record it wrote)."""

    def to_json(self) -> dict[str, Any]:
        """The verification as JSON (``wfe verify --json``)."""
        bad = self.first_bad
        return {
            "workflow_run_id": self.workflow_run_id,
            "ok": self.ok,
            "links_checked": self.links_checked,
            "records_checked": self.records_checked,
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
