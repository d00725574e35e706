"""``wfe approvals list|approve|reject`` and ``wfe run fork`` against real Temporal.

The worker runs in the test process (``running_kernel``); the CLI connects to the same server
and side-store as a user's shell would.
"""

from __future__ import annotations

import json
from typing import Any

from engine import RunCreate, RunStatus
from engine.cli.approvals import parse_duration
from tests.cli.support import Wfe, assert_one_line_error, clean_env, temporal_address
from tests.helpers import running_kernel
from tests.integration.test_approvals import _waiting, approval_workflow

WORKFLOWS = "tests.integration.test_approvals:approval_workflow"


def _opts(env: Any, store: Any, kernel: Any) -> list[str]:
    return [
        "--temporal-address", temporal_address(env),
        "--task-queue", kernel.task_queue,
        "--database-url", store.url,
    ]  # fmt: skip


async def test_list_approve_reject_and_fork_from_the_cli(wfe: Wfe, env: Any, store: Any) -> None:
    async with running_kernel(env, store, approval_workflow()) as kernel:
        opts = _opts(env, store, kernel)
        who = clean_env(WFE_PRINCIPAL="user:lead@acme.example")
        first = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        second = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        await _waiting(kernel, first)
        await _waiting(kernel, second)

        listed = await wfe("approvals", "list", *opts, env=who)
        assert listed.exit_code == 0, listed.stderr
        assert "REQUESTED FROM" in listed.stdout and first in listed.stdout
        assert "decision.outcome=refund" in listed.stdout
        as_json = await wfe(
            "approvals", "list", "--requested-from", "support-leads", "--json", *opts
        )
        items = json.loads(as_json.stdout)
        assert {i["workflow_run_id"] for i in items} == {first, second}
        first_page = await wfe("approvals", "list", "--limit", "1", "--json", *opts)
        assert len(json.loads(first_page.stdout)) == 1 and "--cursor" in first_page.stderr
        none = await wfe("approvals", "list", "--older-than", "1h", "--json", *opts)
        assert json.loads(none.stdout) == []
        other = await wfe("approvals", "list", "--workflow", "payout", "--json", *opts)
        assert json.loads(other.stdout) == []

        approved = await wfe(
            "approvals", "approve", first, "review", "--comment", "ok", *opts, env=who
        )
        assert approved.exit_code == 0, approved.stderr
        assert "as user lead@acme.example" in approved.stdout and "COMPLETED" in approved.stdout
        run = await kernel.wait_for_run(first)
        assert run.status == RunStatus.COMPLETED
        approvers = await kernel.annotations.list(first, key="approval.approvers")
        assert [(a.value, a.actor_id) for a in approvers] == [
            (["lead@acme.example"], "lead@acme.example")
        ]

        again = await wfe("approvals", "approve", first, "review", *opts, env=who)
        assert_one_line_error(again, "not waiting for a decision")
        no_reason = await wfe("approvals", "reject", second, "review", "--comment", " ", *opts)
        assert_one_line_error(no_reason, "--comment")
        rejected = await wfe(
            "approvals", "reject", second, "review", "--comment", "too much", *opts, env=who
        )
        assert rejected.exit_code == 0, rejected.stderr
        assert (await kernel.wait_for_run(second)).status == RunStatus.FAILED

        # fork the rejected run from its review: it waits for a decision again
        forked = await wfe(
            "run", "fork", second, "--from-stage", "review", "--reason", "second look",
            "--workflows", WORKFLOWS, "--json", *opts,
        )  # fmt: skip
        assert forked.exit_code == 0, forked.stderr
        fork_id = json.loads(forked.stdout)["workflow_run_id"]
        await _waiting(kernel, fork_id)
        stages = {s.stage_id: s for s in await kernel.list_stages(fork_id)}
        assert stages["propose"].copied_from is not None
        await wfe("approvals", "approve", fork_id, "review", *opts, env=who)
        waited = await wfe("run", "show", fork_id, "--json", *opts)
        assert json.loads(waited.stdout)["status"] in ("RUNNING", "COMPLETED")
        assert (await kernel.wait_for_run(fork_id)).status == RunStatus.COMPLETED
        reason = await kernel.annotations.list(fork_id, key="revision.reason")
        assert [a.value for a in reason] == ["second look"]
        bad = await wfe(
            "run", "fork", fork_id, "--from-stage", "nope", "--workflows", WORKFLOWS, *opts
        )
        assert_one_line_error(bad, "nope")


def test_durations_parse() -> None:
    assert parse_duration("1h30m", "--older-than").total_seconds() == 5400
    assert parse_duration("2d", "--older-than").days == 2
    assert parse_duration("90s", "--older-than").total_seconds() == 90
