"""Helpers of the web tests: an httpx client on the app served by uvicorn on loopback, and a
side-store seeded with runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from engine.core.annotations import Actor, build_drafts
from engine.core.records import RunRecord, StageRecord
from engine.store import SqlStore
from engine.store.contract import NewRun, NewStage
from engine.web import start_server

SCRIPT = "<script>window.pwned=1</script>"
UI = "http://temporal-ui.test:8233"


@asynccontextmanager
async def api_client(app: Any, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking over real HTTP to ``app``, served by uvicorn on 127.0.0.1 for
    the block, with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        start_server(app) as server,
        httpx.AsyncClient(base_url=server.url, headers=headers) as client,
    ):
        yield client


@dataclass(frozen=True)
class Seeded:
    """Three runs, oldest first: r1 PENDING (alpha), r2 CANCELLED (alpha), r3 RUNNING (beta)."""

    r1: RunRecord
    r2: RunRecord
    r3: RunRecord
    stage: StageRecord
    """r3's ``classify`` stage record."""


async def _new_run(
    store: SqlStore, workflow_id: str, key: str, annotations: list[tuple[dict[str, Any], Any]]
) -> str:
    drafts = [
        (build_drafts(attributes, actor=actor, payload=payload), False)
        for attributes, (actor, payload) in annotations
    ]
    run_id, created = await store.create_run(
        NewRun(
            workflow_id=workflow_id,
            workflow_name=workflow_id.title(),
            input={"ticket": key},
            config={},
            priority=5,
            metadata=None,
            idempotency_key=key,
            annotations=drafts,
        ),
        "wfe-run-{run_id}",
    )
    assert created
    return run_id


async def seed(store: SqlStore) -> Seeded:
    """Runs with run-scoped annotations (typed values, actors, a payload, a ``<script>``)."""
    bob = Actor(kind="user", id="bob")
    agent = Actor(kind="agent", id="triage-agent", version="v3")
    r1 = await _new_run(
        store,
        "alpha",
        "t-1",
        [
            ({"trigger.source": SCRIPT, "trigger.reason": "new ticket"}, (bob, None)),
            (
                {
                    "decision.outcome": "low",
                    "decision.used_fallback": True,
                    "crm.sla_hours": 4,
                },
                (agent, {"raw": [1, 2], "note": "<b>bold</b>"}),
            ),
        ],
    )
    r2 = await _new_run(
        store,
        "alpha",
        "t-2",
        [({"decision.outcome": "high", "decision.used_fallback": False}, (agent, None))],
    )
    assert await store.cancel_run(r2, "duplicate", causation_id="c-2")
    r3 = await _new_run(store, "beta", "t-3", [({"decision.outcome": "low"}, (None, None))])
    classify = NewStage(stage_id="classify", name="Classify", number=1, group=1, config={})
    started = await store.start_run(r3, lambda config: [classify], causation_id="s-3")
    assert started.status == "ok"
    (stage,) = await store.list_stages(r3)
    return Seeded(
        r1=await store.get_run(r1),
        r2=await store.get_run(r2),
        r3=await store.get_run(r3),
        stage=stage,
    )
