"""Commits that no retry can land, and the bare FAILED outcome written in their place.

A stage outcome that the database refuses for good (a value it cannot hold, a constraint it
breaks) must not be retried forever: the activity's retry, then the workflow's local activity,
would hand the same rows back on every attempt while the run hangs RUNNING. Values are checked
before any write (:meth:`engine.core.payloads.StageOutcome.storage_problem`); what slips past that
check and still fails is turned into a FAILED stage naming the database's reason.
"""

from __future__ import annotations

from sqlalchemy.exc import DataError, IntegrityError, StatementError

from engine.core.payloads import StageCommit
from engine.core.records import StageOutcomeStatus
from engine.core.values import clean_text

__all__ = ["refused_commit", "unfixable"]

MAX_REASON = 500
"""Characters of the database's message kept in the stage's error."""


def unfixable(error: BaseException) -> str | None:
    """The database's reason when ``error`` will recur on every retry of the same rows.

    ``None`` otherwise: a lost connection, a lock timeout or a serialization failure may pass.

    Constraint violations count only when a second try hits them again (the caller retries
    once first): a concurrent writer's insert may have caused the first.
    """
    if isinstance(error, DataError | IntegrityError):
        reason = str(error.orig) if error.orig is not None else str(error)
    elif isinstance(error, StatementError) and isinstance(error.orig, TypeError | ValueError):
        reason = f"{type(error.orig).__name__}: {error.orig}"  # refused before it was sent
    else:
        return None
    first_line = reason.strip().splitlines()[0] if reason.strip() else type(error).__name__
    return clean_text(first_line[:MAX_REASON])


def refused_commit(commit: StageCommit, reason: str) -> StageCommit:
    """``commit`` as a bare FAILED outcome whose error gives ``reason``.

    No output, metrics, logs, annotations or events of its own, so that nothing of what the
    database refused is in it.
    """
    outcome = commit.outcome.model_copy(
        update={
            "status": StageOutcomeStatus.FAILED,
            "output": None,
            "metrics": {},
            "suspended_state": None,
            "error": f"the side-store refused the stage's outcome: {reason}",
            "logs": [],
            "annotations": [],
            "progress": [],
            "ai_calls": [],
        }
    )
    return commit.model_copy(update={"outcome": outcome, "open_next": [], "completes_run": False})
