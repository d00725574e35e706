"""What Temporal's visibility shows of runs, read back from the real dev server.

Every execution names its run (``WfeRunId``) and attempt (``WfeAttempt``); a rerun's
execution carries its own decisions, a closed execution keeps what it had (an attach after the
run ended is in the side-store only), and ``RUNS_QUERY`` counts runs, not executions. A
workflow's declared projection is checked when the worker starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey

from engine import (
    Kernel,
    RunCreate,
    RunRerunFrom,
    SearchAttributesError,
    create_worker,
    define_workflow,
)
from engine.core.search_attributes import (
    ATTEMPT_ATTRIBUTE,
    RUN_ID_ATTRIBUTE,
    RUNS_QUERY,
    projection_problems,
)
from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from tests.helpers import classify, enrich, notify, route, running_kernel

OUTCOME = SearchAttributeKey.for_keyword("DecisionOutcome")


def declared_triage(projection: dict[str, str]) -> Any:
    return (
        define_workflow(id="declared-triage", search_attributes=projection)
        .pipe(classify)
        .parallel([notify, enrich])
        .pipe(route)
        .build()
    )


async def count(client: Client, query: str, expected: int) -> int:
    """The visibility count once it reaches ``expected`` (visibility lags), or the last one."""
    seen = -1
    for _ in range(100):
        seen = (await client.count_workflows(query)).count
        if seen == expected:
            break
        await asyncio.sleep(0.1)
    return seen


async def test_executions_name_their_run_and_attempt_and_runs_count_once(
    env: Any, store: SqlStore
) -> None:
    workflow = declared_triage({"decision.outcome": "DecisionOutcome"})
    async with running_kernel(env, store, workflow) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="declared-triage", input={"text": "urgent: VPN down"})
        )
        run_id = created.workflow_run_id
        await kernel.wait_for_run(run_id)
        await env.client.get_workflow_handle(temporal_workflow_id(run_id)).result()
        # A rerun that decides again: its execution carries the decision too.
        await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="classify"))
        rerun = env.client.get_workflow_handle(temporal_workflow_id(run_id, 1))
        await rerun.result()
        # After the run ended: the side-store has it, the closed executions do not.
        await kernel.annotations.attach(run_id, attributes={"decision.outcome": "critical"})
        first = await env.client.get_workflow_handle(temporal_workflow_id(run_id)).describe()
        second = await rerun.describe()

    for description, attempt in ((first, 0), (second, 1)):
        attributes = description.typed_search_attributes
        assert attributes.get(RUN_ID_ATTRIBUTE) == run_id
        assert attributes.get(ATTEMPT_ATTRIBUTE) == attempt
        assert attributes.get(OUTCOME) == "high"
    decided = f"WfeRunId = '{run_id}' AND DecisionOutcome = 'high'"
    assert await count(env.client, decided, 2) == 2  # executions
    assert await count(env.client, f"{decided} AND {RUNS_QUERY}", 1) == 1  # runs
    assert (
        await count(env.client, f"WfeRunId = '{run_id}' AND DecisionOutcome = 'critical'", 0) == 0
    )


async def test_declared_projection_is_checked_when_the_worker_starts(
    env: Any, store: SqlStore
) -> None:
    workflow = declared_triage({"decision.outcome": "DecisionOutcome", "acme.tier": "AcmeTier"})
    kernel = Kernel(client=env.client, store=store, workflows=[workflow], task_queue="tq-check")
    with pytest.raises(SearchAttributesError) as error:
        async with create_worker(kernel):
            pass
    message = str(error.value)
    assert "not registered on the server: AcmeTier" in message
    assert "temporal operator search-attribute create" in message


def test_projection_problems_name_types_and_limits() -> None:
    registered = {"DecisionOutcome": "Keyword", "Score": "Int"}
    missing, problems = projection_problems(
        {"DecisionOutcome": "Keyword", "Score": "Keyword", "Tier": "Keyword"}, registered
    )
    assert missing == ["Tier"]
    assert problems == ["Score is registered as Int, the engine needs Keyword"]
    wanted = {f"K{n}": "Keyword" for n in range(11)}
    _, problems = projection_problems(wanted, dict(wanted))
    assert problems == [
        "11 Keyword attributes wanted, Temporal's SQL visibility allows 10 per namespace"
    ]
