"""Checking a run's record chain against its records (``kernel.verify``, ``wfe verify``).

The check recomputes every link's hash from the records as the database holds them now,
then checks what the links cannot: that every annotation has a link (one inserted by hand
has none), that every stage record a link names is still there unless a rerun deleted it,
that each settled stage record still holds the outcome its last link recorded, and that the
run's head and length name the last link (links deleted from the end).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.core.evidence import (
    BadRecord,
    ChainVerification,
    link_hash,
    text_digest,
)
from engine.store.chain import (
    ANNOTATION_FIELDS,
    SETTLED,
    Link,
    annotation_link,
    run_link,
    stage_link,
)
from engine.store.models import ANNOTATIONS, CHAIN_LINKS, RUNS, STAGES

__all__ = [
    "LINK_COLUMNS",
    "RUN_COLUMNS",
    "STAGE_COLUMNS",
    "ChainRecords",
    "check_chain",
    "read_chain",
    "verify_chain",
]


def _holds(link: Link) -> Any:
    return json.loads(link.text)


@dataclass(frozen=True)
class ChainRecords:
    """What a run's chain is checked against: the run, its links, annotations and stages.

    All as column mappings, which is what an evidence bundle carries too.
    """

    run: Mapping[Any, Any]
    links: list[Mapping[Any, Any]]
    annotations: dict[str, Mapping[Any, Any]]
    stages: dict[str, Mapping[Any, Any]]


RUN_COLUMNS = ("id", "workflow_id", "workflow_name", "workflow_type", "input", "created_at")
STAGE_COLUMNS = ("id", "stage_id", "attempt", "status", "output_data", "error_message")
LINK_COLUMNS = ("sequence", "kind", "record_id", "body", "hash")


def read_chain(session: Session, run_id: str) -> ChainRecords | None:
    """The run's chain and the records it covers; ``None`` if there is no such run."""
    run = (
        session.execute(
            select(*(RUNS.c[n] for n in RUN_COLUMNS), RUNS.c.chain_head, RUNS.c.chain_length).where(
                RUNS.c.id == run_id
            )
        )
        .mappings()
        .first()
    )
    if run is None:
        return None
    links = session.execute(
        select(*(CHAIN_LINKS.c[n] for n in LINK_COLUMNS))
        .where(CHAIN_LINKS.c.workflow_run_id == run_id)
        .order_by(CHAIN_LINKS.c.sequence)
    ).mappings()
    annotations = session.execute(
        select(*(ANNOTATIONS.c[n] for n in ANNOTATION_FIELDS)).where(
            ANNOTATIONS.c.workflow_run_id == run_id
        )
    ).mappings()
    stages = session.execute(
        select(*(STAGES.c[n] for n in STAGE_COLUMNS)).where(STAGES.c.workflow_run_id == run_id)
    ).mappings()
    return ChainRecords(
        run,
        list(links),
        {row["id"]: row for row in annotations},
        {row["id"]: row for row in stages},
    )


def verify_chain(session: Session, run_id: str) -> ChainVerification | None:
    """Check the run's chain; ``None`` if there is no such run."""
    records = read_chain(session, run_id)
    return None if records is None else check_chain(records)


def check_chain(records: ChainRecords) -> ChainVerification:
    """Recompute the chain from ``records`` (see the module doc); no database needed."""
    run, links = records.run, records.links
    annotations, stages = records.annotations, records.stages
    run_id = str(run["id"])
    listed = [{k: link[k] for k in LINK_COLUMNS} for link in links]
    walk = _Walk(run, annotations)

    def failed(bad: BadRecord, checked: int) -> ChainVerification:
        return ChainVerification(
            run_id, False, checked, run["chain_head"], bad, listed, walk.records
        )

    previous: str | None = None
    for number, link in enumerate(links, start=1):
        kind, record_id, body = link["kind"], link["record_id"], link["body"]
        if link["sequence"] != number:
            missing = number if link["sequence"] > number else link["sequence"]
            return failed(
                BadRecord(missing, kind, record_id, None, f"link {missing} is missing"), number - 1
            )
        try:
            text = walk.link_text(number, kind, record_id, body)
        except _Bad as found:
            return failed(found.record, number - 1)
        expected = link_hash(previous, text)
        if expected != link["hash"]:
            problem = "its record or link was changed after it was written"
            label = walk.label(kind, record_id)
            holds = _loads(text)
            return failed(BadRecord(number, kind, record_id, label, problem, holds), number - 1)
        previous = expected
    checked = len(links)
    if previous != run["chain_head"] or checked != run["chain_length"]:
        problem = (
            f"the run's chain head names link {run['chain_length']} ({run['chain_head']}), "
            f"the links end at {checked} ({previous}): links were deleted or added"
        )
        return failed(BadRecord(None, "head", run_id, None, problem), checked)
    for annotation_id, row in annotations.items():
        if annotation_id not in walk.chained:
            problem = "the annotation has no link: it was inserted afterwards"
            holds = json.loads(annotation_link(row).text)
            return failed(
                BadRecord(None, "annotation", annotation_id, str(row["key"]), problem, holds),
                checked,
            )
    for record_id, outcome in walk.last_outcome.items():
        if record_id not in stages and record_id not in walk.removed:
            problem = "the stage record was deleted (no rerun removed it)"
            bad = BadRecord(None, "stage", record_id, outcome.get("stage_id"), problem, outcome)
            return failed(bad, checked)
    for record_id, stage in stages.items():
        if stage["status"] not in SETTLED:
            continue  # PENDING, RUNNING, CANCELLED: no outcome of its own to hold
        now = stage_link(*(stage[n] for n in STAGE_COLUMNS))
        recorded = walk.last_outcome.get(record_id)
        if recorded is None or json.loads(now.text) != recorded:
            problem = (
                "the stage record holds an outcome no link recorded"
                if recorded is None
                else "the stage record no longer holds the outcome its last link recorded"
            )
            bad = BadRecord(None, "stage", record_id, stage["stage_id"], problem, _holds(now))
            return failed(bad, checked)
    return ChainVerification(run_id, True, checked, run["chain_head"], None, listed, walk.records)


class _Bad(Exception):
    """A link's walk found ``record`` bad: the check stops there (raised from deep in a write)."""

    def __init__(self, record: BadRecord) -> None:
        self.record = record


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass
class _Walk:
    """What the links walked so far recorded, and each link's text from the records now."""

    run: Mapping[Any, Any]
    annotations: dict[str, Mapping[Any, Any]]
    chained: set[str] = field(default_factory=set)
    last_outcome: dict[str, Mapping[Any, Any]] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    records: int = 0

    def label(self, kind: str, record_id: str) -> str | None:
        if kind == "annotation" and record_id in self.annotations:
            return str(self.annotations[record_id]["key"])
        if kind == "stage" and record_id in self.last_outcome:
            return self.last_outcome[record_id].get("stage_id")
        return None

    def link_text(self, number: int, kind: str, record_id: str, body: str | None) -> str:
        """The text link ``number`` hashes, recomputed where its record is the source."""
        if kind == "write":
            if body is None:
                raise _Bad(BadRecord(number, kind, record_id, None, "the link holds no records"))
            members = _loads(body)
            if not isinstance(members, list):
                problem = "its record or link was changed after it was written"
                raise _Bad(BadRecord(number, kind, record_id, None, problem, members))
            for member in members:
                self._member(number, member)
            return body
        if kind in ("annotation", "run"):
            return self._recomputed(number, kind, record_id)
        if body is None:
            raise _Bad(BadRecord(number, kind, record_id, None, "the link holds no record"))
        self._stored(kind, record_id, _loads(body))
        return body

    def _member(self, number: int, member: Any) -> None:
        """Check one record of a write's link against the record now."""
        if not isinstance(member, dict):
            member = {}
        kind, record_id = member.get("kind"), member.get("id")
        if kind in ("annotation", "run") and isinstance(record_id, str):
            text = self._recomputed(number, kind, record_id)
            if text_digest(text) != member.get("sha256"):
                problem = "its record was changed after it was written"
                label = self.label(kind, record_id)
                raise _Bad(BadRecord(number, kind, record_id, label, problem, json.loads(text)))
        elif kind in ("stage", "rerun"):
            self._stored(kind, record_id, member)
        else:
            problem = "the link holds a record of no known kind"
            raise _Bad(BadRecord(number, "write", record_id, None, problem, member))

    def _recomputed(self, number: int, kind: str, record_id: str) -> str:
        """The canonical text of a record that never changes, from the record as it is now."""
        self.records += 1
        if kind == "run":
            return run_link(self.run).text
        row = self.annotations.get(record_id)
        if row is None:
            problem = "the annotation was deleted"
            raise _Bad(BadRecord(number, kind, record_id, None, problem))
        self.chained.add(record_id)
        return annotation_link(row).text

    def _stored(self, kind: str, record_id: Any, holds: Any) -> None:
        """Take in a record the link keeps (a stage outcome, a rerun)."""
        self.records += 1
        if not isinstance(holds, dict):
            return  # changed by hand: the link's hash finds it
        if kind == "stage" and isinstance(record_id, str):
            self.last_outcome[record_id] = holds
        elif kind == "rerun":
            self.removed.update(holds.get("removed", []))
