"""The run's tamper-evident record chain: the links its writes append.

Every record of a run that is evidence is covered by a link in ``workflow_chain_links``, in
the order the run's writes committed them: the run itself (its identity and input), each
annotation, each stage outcome (status, a digest of its output, error, attempt), and each
rerun (which stage records it deleted). The records one transaction writes share one link (a
``write``: :func:`write_link`), which holds each record, or for a record that never changes a
digest of it; a write of one record has that record's own link. A link's hash covers the
previous link's hash and its canonical JSON (:mod:`engine.core.evidence`), so changing,
deleting or inserting a record or a link afterwards breaks the chain from there on
(:mod:`engine.store.chain_check` finds where). The run row keeps the chain's head and length,
so a link appended at the end is checked against it too.

One link per write, not one per record: a stage commit with ten annotations wrote eleven link
rows, hashed one after another in SQL on PostgreSQL, and the chain took 14.3-15.4% of that
commit's CPU; as one row and one hash, 8.2-12.1% on the same VM (``bench/README.md``,
session 10).

Links are appended inside the transaction that writes their records, under the run's row
lock, which every writer of a run takes: concurrent writers to one run (parallel stages,
attaches) append one after the other, never forking the chain. A new write path calls
:func:`append_links` with the links of what it wrote (:func:`annotation_link`,
:func:`stage_link`, or a :class:`Link` of its own kind with a ``body``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Text,
    bindparam,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import CTE, BindParameter, ColumnClause

from engine.core.evidence import (
    canonical_json,
    canonical_record,
    digest,
    link_hash,
    reference,
    timestamp,
)
from engine.core.records import RunStatus
from engine.store import direct
from engine.store.models import ANNOTATIONS, CHAIN_LINKS, RUNS, STAGES

__all__ = [
    "ANNOTATION_FIELDS",
    "INSERT_LINKS",
    "Link",
    "annotation_link",
    "annotation_links",
    "annotation_references",
    "append_links",
    "chain_ctes",
    "chain_existing",
    "chain_params",
    "link_row",
    "outcome_link",
    "rerun_link",
    "run_link",
    "stage_link",
    "write_link",
]

ANNOTATION_FIELDS = (
    "id",
    "created_at",
    "attempt",
    "scope",
    "scope_id",
    "actor_kind",
    "actor_id",
    "actor_version",
    "on_behalf_of_kind",
    "on_behalf_of_id",
    "on_behalf_of_version",
    "key",
    "value",
    "value_text",
    "value_number",
    "value_bool",
    "payload",
    "idempotency_key",
)
"""An annotation's fields its link covers: all but its run (the chain's own) and its stage
record id, which a rerun sets to NULL when it deletes the record (``scope_id`` and ``attempt``
still name the stage)."""


@dataclass(frozen=True)
class Link:
    """A record's link, before it is numbered and hashed."""

    kind: str
    record_id: str
    text: str
    """The record's canonical JSON: what the hash covers."""
    stored: bool
    """Whether ``text`` is kept in the link (a record that changes or goes later) or
    recomputed from the record (one that never changes)."""


def run_link(row: Mapping[Any, Any]) -> Link:
    """The first link of a run: its identity and a digest of its input."""
    body = {
        "kind": "run",
        "id": row["id"],
        "workflow_id": row["workflow_id"],
        "workflow_name": row["workflow_name"],
        "workflow_type": row["workflow_type"],
        "input_sha256": digest(row["input"]),
        "created_at": row["created_at"],
    }
    return Link("run", str(row["id"]), canonical_json(body), stored=False)


def annotation_link(row: Mapping[Any, Any]) -> Link:
    """The link of an annotation row (a mapping of its columns)."""
    return annotation_links([row])[0]


def annotation_links(rows: Rows) -> list[Link]:
    """The links of annotation rows written together (one per row, in order)."""
    return [
        Link("annotation", str(row["id"]), text, stored=False)
        for row, text in zip(rows, annotation_texts(rows), strict=True)
    ]


def annotation_text(row: Mapping[Any, Any]) -> str:
    """The canonical JSON of an annotation row's link: ``canonical_json`` of its fields."""
    return annotation_texts([row])[0]


def annotation_texts(rows: Rows) -> list[str]:
    """The canonical JSON of each row's link (:func:`annotation_text`), for rows written together.

    Written out field by field, in canonical key order, and the runs of fields that the rows
    of one write share (who wrote them and when, on whose behalf, where) encoded once: every
    stage commit builds ten of these or more. The general way (sorting the keys and encoding
    each row as a whole) took 7.5 µs a row; field by field 3.7; with the shared runs 1.9
    (ten rows of one commit, tight loop; the row's own fields stay written out, as a loop
    over them took twice as long). The value is encoded once too: a typed column that holds
    the very value (``draft_rows`` puts the string or flag itself there) has its text, and an
    empty field is ``null`` without a call: 1.7 → 1.4 µs a row (session 11). A property test
    holds the result, for any rows, to canonical JSON as :mod:`engine.core.evidence` defines
    it (the encoder over the normal form).
    """
    texts: list[str] = []
    previous: Mapping[Any, Any] | None = None
    actor = behalf = where = ""
    encode = canonical_json
    for row in rows:
        if previous is None or not _shared(row, previous, _ACTOR_RUN):
            actor = _run_text(row, _ACTOR_RUN)
        if previous is None or not _shared(row, previous, _BEHALF_RUN):
            behalf = _run_text(row, _BEHALF_RUN)
        if previous is None or not _shared(row, previous, _WHERE_RUN):
            where = _run_text(row, _WHERE_RUN)
        previous = row
        value = row["value"]
        value_text = encode(value)
        flag, number, text = row["value_bool"], row["value_number"], row["value_text"]
        flag_text = "null" if flag is None else value_text if flag is value else encode(flag)
        number_text = (
            "null" if number is None else value_text if number is value else encode(number)
        )
        text_text = "null" if text is None else value_text if text is value else encode(text)
        idempotency_key, payload = row["idempotency_key"], row["payload"]
        texts.append(
            f'{{{actor},"id":{encode(row["id"])},"idempotency_key":'
            f"{'null' if idempotency_key is None else encode(idempotency_key)},"
            f'"key":{encode(row["key"])},{behalf},'
            f'"payload":{"null" if payload is None else encode(payload)},{where},'
            f'"value":{value_text},"value_bool":{flag_text},"value_number":{number_text},'
            f'"value_text":{text_text}}}'
        )
    return texts


# A link's keys in canonical (code point) order are: actor_id, actor_kind, actor_version,
# attempt, created_at | id, idempotency_key, key | kind, on_behalf_of_id, on_behalf_of_kind,
# on_behalf_of_version | payload | scope, scope_id | value, value_bool, value_number,
# value_text. The runs a write's rows share (kind is constant):
_ACTOR_RUN = ("actor_id", "actor_kind", "actor_version", "attempt", "created_at")
_BEHALF_RUN = ("on_behalf_of_id", "on_behalf_of_kind", "on_behalf_of_version")
_WHERE_RUN = ("scope", "scope_id")
_SHAREABLE = frozenset((str, int, datetime, type(None)))


def _run_text(row: Mapping[Any, Any], names: tuple[str, ...]) -> str:
    """``"a":…,"b":…`` for the fields ``names`` of ``row``: the text of one shared run."""
    return ",".join(
        ('"kind":"annotation",' if name == "on_behalf_of_id" else "")
        + encode_basestring(name)
        + ":"
        + (_created_at(row[name]) if name == "created_at" else canonical_json(row[name]))
        for name in names
    )


def _shared(row: Mapping[Any, Any], previous: Mapping[Any, Any], names: tuple[str, ...]) -> bool:
    """Whether ``row`` holds what ``previous`` held in ``names``: then their text is the same.

    Same type and equal, for scalars only (``1 == True``, but their texts differ).
    """
    for name in names:
        value, before = row[name], previous[name]
        if value is before:
            continue
        if type(value) is not type(before) or type(value) not in _SHAREABLE or value != before:
            return False
    return True


def _created_at(value: Any) -> str:
    # Formatted once per write; a bundle's rows hold the canonical text already.
    return _quoted_timestamp(value) if isinstance(value, datetime) else canonical_json(value)


@lru_cache(maxsize=64)
def _quoted_timestamp(value: datetime) -> str:
    """A commit's rows share one timestamp: formatted once."""
    return '"' + timestamp(value) + '"'


def stage_link(
    record_id: str, stage_id: str, attempt: int, status: str, output: Any, error: str | None
) -> Link:
    """The link of a stage outcome: the record's status, output digest and error after it."""
    body = {
        "kind": "stage",
        "id": record_id,
        "stage_id": stage_id,
        "attempt": attempt,
        "status": status,
        "output_sha256": digest(output),
        "error": error,
    }
    return Link("stage", record_id, canonical_record(body), stored=True)


def outcome_link(record_id: str, stage_id: str, attempt: int, changes: Mapping[Any, Any]) -> Link:
    """The link of a stage outcome that sets ``changes`` on its record.

    A poll that found the batch unfinished leaves it SUSPENDED, with no output or error.
    """
    return stage_link(
        record_id,
        stage_id,
        attempt,
        str(changes.get("status", RunStatus.SUSPENDED)),
        changes.get("output_data"),
        changes.get("error_message"),
    )


def rerun_link(run_id: str, attempt: int, removed: Sequence[str]) -> Link:
    """The link of a rerun: the stage records it deleted (their outcome links stay)."""
    body = {"kind": "rerun", "attempt": attempt, "removed": sorted(removed)}
    return Link("rerun", run_id, canonical_json(body), stored=True)


Rows = Sequence[Mapping[Any, Any]]
"""Annotation rows (mappings of their columns), written together."""


def write_link(links: Sequence[Link], annotations: Rows = ()) -> Link:
    """The one link of the records one write wrote, in order (see :mod:`engine.core.evidence`).

    The records are ``links``' then the ``annotations`` rows'. The links of records that change
    or go later are kept whole in it, the others as a reference holding their digest.
    """
    if len(links) + len(annotations) == 1:
        return links[0] if links else annotation_link(annotations[0])
    parts = [
        link.text if link.stored else reference(link.kind, link.record_id, link.text)
        for link in links
    ]
    parts.extend(annotation_references(annotations))
    first = links[0].record_id if links else str(annotations[0]["id"])
    return Link("write", first, "[" + ",".join(parts) + "]", stored=True)


def annotation_references(rows: Rows) -> list[str]:
    """A write link's references to annotation rows (:func:`engine.core.evidence.reference`).

    Built from the rows' texts taken together (:func:`annotation_texts`).
    """
    return [
        reference("annotation", str(row["id"]), text)
        for row, text in zip(rows, annotation_texts(rows), strict=True)
    ]


def link_row(
    run_id: str, head: str | None, length: int, links: Sequence[Link], annotations: Rows = ()
) -> tuple[dict[str, Any], str]:
    """The row of one write's records (:func:`write_link`), appended after ``head``.

    ``head`` is the chain's ``length``-th hash; returns the row and the new head.
    """
    link = write_link(links, annotations)
    head = link_hash(head, link.text)
    row = {
        "workflow_run_id": run_id,
        "sequence": length + 1,
        "kind": link.kind,
        "record_id": link.record_id,
        "body": link.text if link.stored else None,
        "hash": head,
    }
    return row, head


_HEAD = (
    select(RUNS.c.chain_head, RUNS.c.chain_length)
    .where(RUNS.c.id == bindparam("run_id"))
    .with_for_update()
)
INSERT_LINKS = CHAIN_LINKS.insert()
"""The links' insert, one statement for every writer of links (compiled once for the driver)."""
_SET_HEAD = (
    RUNS.update()
    .where(RUNS.c.id == bindparam("run_id"))
    # updated_at kept: the chain is bookkeeping, not a change of the run (stale-run scans
    # order by it).
    .values(
        chain_head=bindparam("head"),
        chain_length=bindparam("length"),
        updated_at=RUNS.c.updated_at,
    )
)


def append_links(
    session: Session | Connection, run_id: str, links: Sequence[Link], annotations: Rows = ()
) -> None:
    """Append the link of one write's records to the run's chain in the caller's transaction.

    The records are ``links``' then the ``annotations`` rows' (:func:`write_link`). Takes the
    run's row lock (``FOR UPDATE``; SQLite holds the write lock already) if the caller does not
    hold it yet, so the head it reads is the last committed one.
    """
    if not links and not annotations:
        return
    connection = session.connection() if isinstance(session, Session) else session
    # Through the driver (engine.store.direct), on both backends: on SQLite, SQLAlchemy's work
    # per statement (about 50 µs) was most of the chain's cost on the stage commit, where
    # SQLite runs each of these in a few µs.
    found = direct.execute(connection, _HEAD, {"run_id": run_id})
    if not found:
        return  # the run is gone: so are its records
    head, length = found[0]
    row, head = link_row(run_id, head, length or 0, links, annotations)
    direct.execute(connection, INSERT_LINKS, row)
    direct.execute(
        connection, _SET_HEAD, {"run_id": run_id, "head": head, "length": row["sequence"]}
    )


# -- in one PostgreSQL statement ----------------------------------------------------------------


def chain_params(links: Sequence[Link], annotations: Rows = ()) -> dict[str, Any]:
    """The bound values :func:`chain_ctes` reads: the write's one link, unhashed.

    The statement gives the rest: the run and the record (the gate's), and the link's text as
    its body, as every link a one-statement commit writes keeps its text (it holds the stage's
    outcome, which moves on later).
    """
    link = write_link(links, annotations)
    if not link.stored:
        raise ValueError(f"a {link.kind} link's text is not kept: not a stage commit's link")
    return {"c_kind": link.kind, "c_text": link.text}


_EMPTY: ColumnClause[str] = literal_column("''", Text)
_ZERO: ColumnClause[int] = literal_column("0", Integer)


def chain_ctes(
    gate: CTE, run_id: BindParameter[str], run_values: Mapping[str, Any] | None = None
) -> tuple[CTE, ...]:
    """The CTEs that append a one-statement commit's link, hashed by PostgreSQL.

    ``run_values`` are more columns the run row's ``UPDATE`` sets (a commit that completes the
    run): PostgreSQL lets a statement update a row once, and the chain's head is on that row.

    The commit is :mod:`engine.store.one_statement`'s, of run ``run_id``; the link is appended
    only if ``gate`` (the stage record's ``UPDATE``) returned its row, which is the link's record.

    The run row's ``UPDATE`` moves the head to ``sha256(head ‖ text)`` (as
    :func:`engine.core.evidence.link_hash`) from the head it finds under the run's lock (the
    gate's run-status guard takes it): after a wait for that lock, an ``UPDATE`` computes
    from the row as the writer before left it, not as the statement's snapshot saw it, so the
    link follows that writer's. The link's row is inserted from what the ``UPDATE`` returns.
    It binds two parameters of its own, the link's kind and text. It bound five (the run, the
    record and whether the text is kept as well), and SQLAlchemy's work for the chain's part
    of the statement then took 17 µs of the commit's client CPU (``bench/README.md``,
    session 11).
    """
    text = bindparam("c_text", type_=Text)
    hashed = func.encode(
        func.sha256(
            func.convert_to(
                func.coalesce(RUNS.c.chain_head, _EMPTY).op("||")(text),
                literal_column("'UTF8'"),
            )
        ),
        literal_column("'hex'"),
    )
    moved = (
        RUNS.update()
        .where(RUNS.c.id == run_id, select(gate.c.id).exists())
        .values(
            {
                "updated_at": RUNS.c.updated_at,
                **(run_values or {}),
                "chain_head": hashed,
                "chain_length": func.coalesce(RUNS.c.chain_length, _ZERO) + literal_column("1"),
            }
        )
        .returning(RUNS.c.id, RUNS.c.chain_head, RUNS.c.chain_length)
        .cte("chain_moved")
    )
    link = select(
        moved.c.id,
        moved.c.chain_length,
        bindparam("c_kind", type_=Text),
        gate.c.id,
        text,
        moved.c.chain_head,
    ).select_from(moved.join(gate, literal_column("true")))
    insert = CHAIN_LINKS.insert().from_select(
        ["workflow_run_id", "sequence", "kind", "record_id", "body", "hash"], link
    )
    return (moved, insert.cte("chain_link"))


# -- runs written before the chain ----------------------------------------------------------

SETTLED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.SUSPENDED)
"""Stage statuses that only an outcome (with its link) sets."""


def chain_existing(connection: Connection, run_id: str) -> None:
    """Chain a run written before the chain existed (revision 0011 runs this).

    The links are the run, its annotations in the order they were written, and its stages'
    current outcomes.
    """
    # Only the columns the links read: a later revision's columns may not exist yet.
    identity = [RUNS.c[name] for name in ("id", "workflow_id", "workflow_name", "workflow_type")]
    run = (
        connection.execute(
            select(*identity, RUNS.c.input, RUNS.c.created_at, RUNS.c.chain_length).where(
                RUNS.c.id == run_id
            )
        )
        .mappings()
        .first()
    )
    if run is None or run["chain_length"]:
        return
    links = [run_link(run)]
    annotations = connection.execute(
        select(*(ANNOTATIONS.c[name] for name in ANNOTATION_FIELDS))
        .where(ANNOTATIONS.c.workflow_run_id == run_id)
        .order_by(ANNOTATIONS.c.created_at, ANNOTATIONS.c.id)
    ).mappings()
    links.extend(annotation_links(annotations.all()))
    stage_columns = ("id", "stage_id", "attempt", "status", "output_data", "error_message")
    stages = connection.execute(
        select(*(STAGES.c[name] for name in stage_columns))
        .where(STAGES.c.workflow_run_id == run_id, STAGES.c.status.in_(SETTLED))
        .order_by(STAGES.c.stage_number, STAGES.c.id)
    ).mappings()
    links.extend(stage_link(*(s[name] for name in stage_columns)) for s in stages)
    # A link per record, as the chain was first written (before a write's records shared
    # one): the chains revision 0011 made stay as they were, and the check reads both.
    rows: list[dict[str, Any]] = []
    head: str | None = None
    for number, link in enumerate(links):
        row, head = link_row(run_id, head, number, [link])
        rows.append(row)
    for start in range(0, len(rows), 500):
        connection.execute(CHAIN_LINKS.insert(), rows[start : start + 500])
    connection.execute(_SET_HEAD, {"run_id": run_id, "head": head, "length": len(rows)})
