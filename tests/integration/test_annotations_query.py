"""Cross-run annotation queries: typed values, filters, keyset pagination, run counts.

``kernel.annotations.query`` and ``count_runs`` (beyond the original, whose values were never
queryable) with real Temporal runs, on both side-store backends.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from engine import (
    Actor,
    AnnotationError,
    RunCreate,
    RunCreateAnnotation,
    RunStatus,
    StageContext,
    define_stage,
    define_workflow,
)
from tests.helpers import running_kernel

WAIT = timedelta(seconds=30)


class Probe(BaseModel):
    token: str


@define_stage(id="decide", input=Probe)
async def decide_stage(ctx: StageContext[Probe, None]) -> dict[str, Any]:
    ctx.annotate("stage.token", ctx.input.token)
    return {"token": ctx.input.token}


FIRST = define_workflow(id="ann-q1", name="Q1", input=Probe).pipe(decide_stage).build()
SECOND = define_workflow(id="ann-q2", name="Q2", input=Probe).pipe(decide_stage).build()

# name: (workflow, attributes given at creation, actor)
RUNS: dict[str, tuple[str, dict[str, Any], Actor | None]] = {
    "A": ("ann-q1", {"decision.outcome": "low", "decision.used_fallback": True}, None),
    "B": ("ann-q1", {"decision.outcome": "low", "decision.used_fallback": False}, None),
    "C": ("ann-q1", {"decision.outcome": "1"}, None),
    "D": ("ann-q1", {"decision.outcome": 1}, None),
    "E": ("ann-q1", {"decision.outcome": True}, None),
    "F": (
        "ann-q2",
        {"decision.outcome": "low", "decision.used_fallback": True},
        Actor(kind="agent", id="a-2"),
    ),
    "G": ("ann-q1", {"decision.outcome": 0, "decision.used_fallback": 1}, None),
    "H": ("ann-q1", {"decision.outcome": False, "decision.confidence": 0.5}, None),
}


async def test_cross_run_query_by_typed_value_with_keyset_pagination(env, store):
    async with running_kernel(env, store, FIRST, SECOND) as kernel:
        ids: dict[str, str] = {}
        for name, (workflow_id, attributes, actor) in RUNS.items():
            created = await kernel.dispatch(
                RunCreate(
                    workflow_id=workflow_id,
                    input={"token": name},
                    annotations=[RunCreateAnnotation(attributes=attributes, actor=actor)],
                )
            )
            ids[name] = created.workflow_run_id
        for run_id in ids.values():
            run = await kernel.wait_for_run(run_id, timeout=WAIT)
            assert run.status == RunStatus.COMPLETED
        names = {run_id: name for name, run_id in ids.items()}
        # A second matching row on run A: a run counts once.
        await kernel.annotations.attach(ids["A"], attributes={"decision.outcome": "low"})

        async def runs_of(**filters: Any) -> list[str]:
            page = await kernel.annotations.query(limit=1000, **filters)
            assert page.next_cursor is None
            return [names[r.workflow_run_id] for r in page.items]

        # Values compare by type: string, number, boolean.
        assert await runs_of(key="decision.outcome", value="low") == ["A", "B", "F", "A"]
        assert await runs_of(key="decision.outcome", value="1") == ["C"]
        assert await runs_of(key="decision.outcome", value=1) == ["D"]
        assert await runs_of(key="decision.outcome", value=1.0) == ["D"]
        assert await runs_of(key="decision.outcome", value=True) == ["E"]
        assert await runs_of(key="decision.outcome", value=0) == ["G"]
        assert await runs_of(key="decision.outcome", value=False) == ["H"]
        assert await runs_of(key="decision.outcome", value="") == []
        assert await runs_of(key="decision.used_fallback", value=True) == ["A", "F"]
        assert await runs_of(key="decision.used_fallback", value=1) == ["G"]
        assert await runs_of(key="decision.confidence", value=0.5) == ["H"]
        # Filters: workflow, actor, key prefix, value without key, time window.
        assert await runs_of(key="decision.outcome", value="low", workflow_id="ann-q2") == ["F"]
        assert await runs_of(key="decision.outcome", value="low", actor_id="a-2") == ["F"]
        assert await runs_of(value="low") == ["A", "B", "F", "A"]
        assert await runs_of(key_prefix="decision.used", value=True) == ["A", "F"]
        assert await runs_of(key_prefix="stage.", value="C") == ["C"]
        assert await runs_of(key_prefix="Decision.") == []
        now = datetime.now(UTC)
        assert await runs_of(key="decision.outcome", value="low", since=now) == []
        assert await runs_of(key="decision.outcome", value="low", until=now) == [
            "A",
            "B",
            "F",
            "A",
        ]
        row_b = (await kernel.annotations.query(key="decision.outcome", value="low")).items[1]
        assert await runs_of(
            key="decision.outcome", value="low", since=row_b.created_at, until=row_b.created_at
        ) == ["B"]
        full = (await kernel.annotations.query(key_prefix="decision.", limit=1000)).items
        assert len(full) == 14

        # Keyset pagination: pages of 3 cover every row once, in (created_at, id) order.
        collected = []
        cursor = None
        pages = 0
        while True:
            page = await kernel.annotations.query(key_prefix="decision.", limit=3, cursor=cursor)
            pages += 1
            collected.extend(page.items)
            assert len(page.items) <= 3
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert [r.id for r in collected] == [r.id for r in full]
        assert pages == 5
        assert [(r.created_at, r.id) for r in full] == sorted((r.created_at, r.id) for r in full)

        # A cursor resumes where it says, with filters re-applied.
        page = await kernel.annotations.query(key="decision.outcome", value="low", limit=2)
        assert [names[r.workflow_run_id] for r in page.items] == ["A", "B"]
        rest = await kernel.annotations.query(
            key="decision.outcome", value="low", limit=2, cursor=page.next_cursor
        )
        assert [names[r.workflow_run_id] for r in rest.items] == ["F", "A"]

        # Tampered or foreign cursors, bad limits and unsupported values raise AnnotationError.
        def encoded(raw: Any) -> str:
            return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode()

        for bad in [
            "not a cursor",
            "!!!!",
            page.next_cursor[:-4] + "AAAA",  # type: ignore[index]
            encoded({"a": 1}),
            encoded([1, 2]),
            encoded(["2026-01-01T00:00:00", "id"]),  # no time zone
            encoded(["2026-01-01T00:00:00+00:00", 5]),
            encoded(["yesterday", "id"]),
            base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        ]:
            with pytest.raises(AnnotationError, match="cursor"):
                await kernel.annotations.query(key="decision.outcome", cursor=bad)
        for limit in (0, 1001):
            with pytest.raises(AnnotationError):
                await kernel.annotations.query(key="decision.outcome", limit=limit)
        with pytest.raises(AnnotationError):
            await kernel.annotations.query(key="decision.outcome", value=["low"])

        # count_runs: distinct runs carrying every pair, within the window.
        week_ago = datetime.now(UTC) - timedelta(days=7)
        both = {"decision.outcome": "low", "decision.used_fallback": True}
        assert await kernel.annotations.count_runs(match=both, since=week_ago) == 2
        assert await kernel.annotations.count_runs(match=both, workflow_id="ann-q1") == 1
        assert await kernel.annotations.count_runs(match=both, since=now) == 0
        assert await kernel.annotations.count_runs(match=both, until=week_ago) == 0
        assert await kernel.annotations.count_runs("decision.outcome", "low") == 3
        assert await kernel.annotations.count_runs("decision.outcome", 1) == 1
        assert await kernel.annotations.count_runs("decision.outcome", True) == 1
        assert (
            await kernel.annotations.count_runs(
                match={"decision.outcome": "low", "decision.used_fallback": False}
            )
            == 1
        )
        assert (
            await kernel.annotations.count_runs(
                match={"decision.outcome": 1, "decision.used_fallback": True}
            )
            == 0
        )
        assert (
            await kernel.annotations.count_runs(
                "decision.used_fallback", True, match={"decision.outcome": "low"}
            )
            == 2
        )
        with pytest.raises(AnnotationError):
            await kernel.annotations.count_runs(match={})
