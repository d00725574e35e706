"""The run page's chronological view: everything that happened to a run, in time order.

Grouped by stage and attempt (the default view), annotations answer "what did this stage
decide"; in time order, beside the stages' starts and ends, they answer "what happened when":
a decision made after the run ended, an approval given while a stage waited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.core.records import Annotation, RunRecord, StageRecord

__all__ = ["ChronologyEntry", "chronology"]


@dataclass(frozen=True)
class ChronologyEntry:
    """One moment: a run or stage event, or an annotation."""

    at: datetime
    kind: str
    """``run``, ``stage`` or ``annotation``."""
    what: str
    """The event (``started``, ``COMPLETED``, ...) or the annotation's key."""
    where: str
    """``(run)`` or the stage id."""
    attempt: int
    annotation: Annotation | None = None


def _where(annotation: Annotation) -> str:
    if annotation.scope == "run":
        return "(run)"
    return annotation.scope_id or annotation.scope


def chronology(
    run: RunRecord, stages: Sequence[StageRecord], annotations: Iterable[Annotation]
) -> list[ChronologyEntry]:
    """The run's creation, start and end, each stage's start and end, and the annotations.

    Oldest first; ties keep that order: the run, then stages, then annotations.
    """
    entries = [ChronologyEntry(run.created_at, "run", "created", "(run)", 0)]
    if run.started_at is not None:
        entries.append(ChronologyEntry(run.started_at, "run", "started", "(run)", 0))
    for stage in stages:
        if stage.started_at is not None:
            entries.append(
                ChronologyEntry(stage.started_at, "stage", "started", stage.stage_id, stage.attempt)
            )
        if stage.completed_at is not None:
            entries.append(
                ChronologyEntry(
                    stage.completed_at, "stage", stage.status.value, stage.stage_id, stage.attempt
                )
            )
    if run.completed_at is not None:
        entries.append(ChronologyEntry(run.completed_at, "run", run.status.value, "(run)", 0))
    entries += [
        ChronologyEntry(a.created_at, "annotation", a.key, _where(a), a.attempt, a)
        for a in annotations
    ]
    # Stable: equal times keep the order above (Python's sort is stable).
    return sorted(entries, key=lambda entry: entry.at)
