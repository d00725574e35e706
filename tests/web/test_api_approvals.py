"""The approvals inbox, decisions and forks through the HTTP API (real Temporal, both backends)."""

from __future__ import annotations

from engine import Actor, RunCreate, RunStatus
from engine.web import create_app
from engine.web.auth import tokens_from_env
from tests.helpers import running_kernel
from tests.integration.test_approvals import _waiting, approval_workflow
from tests.web.support import api_client

LEAD_TOKEN, CI_TOKEN = "lead-token-1", "ci-token-1"
TOKENS = f"lead:{LEAD_TOKEN}:read+write+approve, ci:{CI_TOKEN}:read+write"


async def test_inbox_decide_and_fork_over_http(env, store):
    async with running_kernel(env, store, approval_workflow()) as kernel:
        app = create_app(kernel, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
        first = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        second = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        await _waiting(kernel, first)
        await _waiting(kernel, second)
        async with (
            api_client(app, LEAD_TOKEN) as api,
            api_client(app, CI_TOKEN) as ci,
            api_client(app) as anonymous,
        ):
            inbox = (
                await api.get("/api/approvals", params={"requested_from": "support-leads"})
            ).json()
            assert {i["workflow_run_id"] for i in inbox["items"]} == {first, second}
            assert inbox["items"][0]["context"]["decision.outcome"] == "refund"
            paged = (await api.get("/api/approvals", params={"limit": 1})).json()
            assert len(paged["items"]) == 1 and paged["next_cursor"]
            rest = await api.get("/api/approvals", params={"cursor": paged["next_cursor"]})
            assert len(rest.json()["items"]) == 1
            older = await api.get("/api/approvals", params={"waiting_longer_than": "PT1H"})
            assert older.json()["items"] == []
            bad = await api.get("/api/approvals", params={"cursor": "zzz"})
            assert bad.status_code == 422 and bad.json()["field"] == "cursor"

            url = f"/api/runs/{first}/stages/review/decision"
            assert (await anonymous.post(url, json={"approved": True})).status_code == 401
            # a principal without the approve right cannot decide
            refused = await ci.post(url, json={"approved": True})
            assert refused.status_code == 403 and "approve" in refused.json()["message"]
            # the approver is never a body field
            smuggled = await api.post(
                url, json={"approved": True, "actor": {"kind": "u", "id": "x"}}
            )
            assert smuggled.status_code == 422
            decided = await api.post(url, json={"approved": True, "comment": "ok"})
            assert decided.status_code == 200, decided.text
            assert decided.json()["status"] == "COMPLETED"
            again = await api.post(url, json={"approved": False})
            assert again.status_code == 409 and again.json()["error"] == "invalid_state"
            approvers = await kernel.annotations.list(first, key="approval.approvers")
            assert [(a.value, a.actor_kind, a.actor_id) for a in approvers] == [
                (["lead"], "principal", "lead")
            ]

            rejected = await api.post(
                f"/api/runs/{second}/stages/review/decision",
                json={"approved": False, "comment": "no"},
            )
            assert rejected.status_code == 200 and rejected.json()["status"] == "FAILED"
            assert "Rejected by principal lead: no" in rejected.json()["error_message"]
            assert (await kernel.wait_for_run(second)).status == RunStatus.FAILED

            fork = await ci.post(
                f"/api/runs/{second}/fork",
                json={"from_stage_id": "review", "reason": "appeal", "idempotency_key": "a-1"},
            )
            assert fork.status_code == 200, fork.text
            body = fork.json()
            assert body["source_run_id"] == second and body["from_stage_id"] == "review"
            repeat = await api.post(
                f"/api/runs/{second}/fork",
                json={"from_stage_id": "review", "idempotency_key": "a-1"},
            )
            assert repeat.json()["workflow_run_id"] == body["workflow_run_id"]
            missing = await api.post(f"/api/runs/{second}/fork", json={"from_stage_id": "nope"})
            assert missing.status_code == 422 and missing.json()["error"] == "stage_not_found"
            await _waiting(kernel, body["workflow_run_id"])
            await kernel.approvals.decide(
                body["workflow_run_id"],
                "review",
                approved=True,
                actor=Actor(kind="user", id="someone"),
            )
            assert (
                await kernel.wait_for_run(body["workflow_run_id"])
            ).status == RunStatus.COMPLETED
