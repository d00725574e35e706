"""An approval run, recorded live under the sandbox, replays: the wait, the Update that
decides it, a losing second decision and a timeout leave a deterministic history."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio.client import WorkflowFailureError, WorkflowHistory

from engine import (
    Actor,
    InvalidStateError,
    RunCreate,
    RunStatus,
    StageRecord,
    define_approval_stage,
    define_workflow,
)
from engine.runtime.kernel import temporal_workflow_id
from engine.worker import sandboxed_runner
from tests.helpers import running_kernel
from tests.integration.test_approvals import _waiting, propose
from tests.temporal_workflows.test_replay import replayer

LEAD = Actor(kind="user", id="lead@example.com")


async def test_decided_and_timed_out_approvals_replay(env: Any, store: Any) -> None:
    decided = define_workflow(id="decided").pipe(propose).pipe(define_approval_stage("ok")).build()
    late = (
        define_workflow(id="late")
        .pipe(define_approval_stage("ok", timeout=timedelta(milliseconds=500)))
        .build()
    )
    sandboxed = {"workflow_runner": sandboxed_runner()}
    histories: list[WorkflowHistory] = []
    async with running_kernel(env, store, decided, late, worker_options=sandboxed) as kernel:
        first = (await kernel.dispatch(RunCreate(workflow_id="decided", input={}))).workflow_run_id
        second = (await kernel.dispatch(RunCreate(workflow_id="late", input={}))).workflow_run_id
        await _waiting(kernel, first, "ok")
        results = await asyncio.gather(
            kernel.approvals.decide(first, "ok", approved=True, actor=LEAD, comment="yes"),
            kernel.approvals.decide(first, "ok", approved=False, actor=LEAD, comment="no"),
            return_exceptions=True,
        )
        assert sum(isinstance(r, StageRecord) for r in results) == 1, results
        assert sum(isinstance(r, InvalidStateError) for r in results) == 1, results
        approved_won = isinstance(results[0], StageRecord)
        outcome = RunStatus.COMPLETED if approved_won else RunStatus.FAILED
        for run_id, status in ((first, outcome), (second, RunStatus.FAILED)):
            run = await kernel.wait_for_run(run_id)
            assert run.status == status
            handle = kernel.client.get_workflow_handle(temporal_workflow_id(run_id))
            try:
                await handle.result()
            except WorkflowFailureError:  # a FAILED run fails its execution (WfeRunFailed)
                assert status == RunStatus.FAILED
            histories.append(await handle.fetch_history())

    for history in histories:
        result = await replayer().replay_workflow(history)
        assert result.replay_failure is None
