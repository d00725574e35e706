"""Create, cancel and rerun through the HTTP API, on a real Temporal dev server (both backends)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import Client

from engine import (
    CompletionCheck,
    Kernel,
    RunStatus,
    Suspend,
    define_async_batch_stage,
    define_workflow,
)
from engine.web import create_app
from tests.helpers import running_kernel, triage_workflow
from tests.web.support import api_client

TOKEN = "command-token"
VIEWER = "http://viewer.test:8000"


def parked_workflow() -> Any:
    """One async-batch stage that suspends for an hour: its run stays RUNNING until cancelled."""

    async def submit(ctx: Any) -> Suspend:
        return Suspend(state={"job": 1}, poll_interval=timedelta(hours=1))

    async def check(state: dict[str, Any], ctx: Any) -> CompletionCheck:
        return CompletionCheck(ready=False)

    stage = define_async_batch_stage(
        id="wait", input=None, output=None, execute=submit, check_completion=check
    )
    return define_workflow(id="parked").pipe(stage).build()


async def _run_count(api: Any) -> int:
    return len((await api.get("/api/runs", params={"limit": 1000})).json()["items"])


async def test_create_rerun_cancel_through_the_api(env, store):
    async with running_kernel(
        env, store, triage_workflow(), parked_workflow(), viewer_url=VIEWER
    ) as kernel:
        app = create_app(kernel, api_token=TOKEN)
        async with api_client(app, TOKEN) as api:
            body = {
                "workflow_id": "ticket-triage",
                "input": {"text": "urgent: printer on fire"},
                "config": {"classify": {"threshold": 0.7}},
                "idempotency_key": "ticket-42",
                "annotations": [
                    {
                        "attributes": {"trigger.source": "api", "trigger.reason": "test"},
                        "actor": {"kind": "service", "id": "helpdesk"},
                        "emit_event": True,
                    }
                ],
            }
            created = await api.post("/api/runs", json=body)
            assert created.status_code == 201, created.text
            result = created.json()
            run_id = result["workflow_run_id"]
            assert set(result) == {"workflow_run_id", "status"}
            again = await api.post("/api/runs", json=body)
            assert again.status_code == 201 and again.json()["workflow_run_id"] == run_id

            run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))
            assert run.status == RunStatus.COMPLETED, await kernel.list_stages(run_id)
            triggers = await kernel.annotations.list(run_id, key_prefix="trigger.")
            # Written by the token's principal ("api", the single WFE_API_TOKEN), on behalf of
            # the actor the body named.
            assert {
                (a.key, a.value, a.actor_kind, a.actor_id, a.on_behalf_of_kind, a.on_behalf_of_id)
                for a in triggers
            } == {
                ("trigger.source", "api", "principal", "api", "service", "helpdesk"),
                ("trigger.reason", "test", "principal", "api", "service", "helpdesk"),
            }
            # The Temporal side links back to the viewer page of the run.
            description = await kernel.client.get_workflow_handle(f"wfe-run-{run_id}").describe()
            assert f"{VIEWER}/runs/{run_id}" in (await description.static_details() or "")

            # Bad commands: 422 naming the field, and nothing written.
            before = await _run_count(api)
            for bad, field in [
                ({**body, "workflow_id": "nope", "idempotency_key": None}, "workflow_id"),
                ({**body, "input": {"txt": "x"}, "idempotency_key": None}, "input"),
                ({**body, "config": {"nostage": {}}, "idempotency_key": None}, "config"),
                (
                    {**body, "annotations": [{"attributes": {"": 1}}], "idempotency_key": None},
                    "annotations",
                ),
                ({**body, "annotations": [{"attributes": {"k": 1}, "x": 1}]}, "annotations.0.x"),
                (
                    {**body, "annotations": [{"attributes": {"deep": _nested(300)}}]},
                    "annotations",
                ),
                ({"input": {}}, "workflow_id"),
                ({**body, "priority": "high"}, "priority"),
            ]:
                response = await api.post("/api/runs", json=bad)
                assert response.status_code == 422, response.text
                assert response.json()["field"] == field, response.json()
            assert await _run_count(api) == before

            # Rerun from the last group: a new attempt of `route`, a new Temporal workflow.
            rerun = await api.post(f"/api/runs/{run_id}/rerun", json={"from_stage_id": "route"})
            assert rerun.status_code == 200, rerun.text
            assert rerun.json() == {
                "workflow_run_id": run_id,
                "from_stage_id": "route",
                "deleted_stages": ["route"],
            }
            run = await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))
            assert run.status == RunStatus.COMPLETED
            detail = (await api.get(f"/api/runs/{run_id}")).json()
            attempts = {s["stage_id"]: s["attempt"] for s in detail["stages"]}
            assert attempts == {"classify": 0, "notify": 0, "enrich": 0, "route": 1}
            assert detail["links"]["temporal_ui_executions"]["1"].endswith(
                f"/workflows/wfe-run-{run_id}-rerun-1"
            )
            unknown_stage = await api.post(
                f"/api/runs/{run_id}/rerun", json={"from_stage_id": "nope"}
            )
            assert unknown_stage.status_code == 422
            assert unknown_stage.json()["field"] == "from_stage_id"
            missing = await api.post("/api/runs/missing/rerun", json={"from_stage_id": "route"})
            assert missing.status_code == 404 and missing.json()["field"] == "run_id"

            # A terminal run is not cancelled; a running one is, and is not rerunnable meanwhile.
            terminal = await api.post(f"/api/runs/{run_id}/cancel", json={"reason": "late"})
            assert terminal.status_code == 409, terminal.text
            assert terminal.json()["error"] == "invalid_state"
            assert f"run {run_id} is COMPLETED" in terminal.json()["message"]
            parked = await api.post("/api/runs", json={"workflow_id": "parked", "input": None})
            parked_id = parked.json()["workflow_run_id"]
            busy = await api.post(f"/api/runs/{parked_id}/rerun", json={"from_stage_id": "wait"})
            assert busy.status_code == 409 and busy.json()["error"] == "invalid_state"
            cancel = await api.post(f"/api/runs/{parked_id}/cancel", json={"reason": "no need"})
            assert cancel.status_code == 200
            assert cancel.json() == {"cancelled": True, "reason": None}
            cancelled = await kernel.wait_for_run(parked_id, timeout=timedelta(seconds=30))
            assert cancelled.status == RunStatus.CANCELLED
            events = (await api.get(f"/api/runs/{parked_id}/events")).json()["items"]
            assert events[-1]["event_type"] == "workflow:cancelled"
            assert events[-1]["payload"]["reason"] == "no need"
            no_body = await api.post(f"/api/runs/{parked_id}/cancel")
            assert no_body.status_code == 409 and "is CANCELLED" in no_body.json()["message"]
            missing = await api.post("/api/runs/missing/cancel")
            assert missing.status_code == 404


async def test_idempotency_conflict_is_409_and_a_failed_start_names_the_run(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        app = create_app(kernel, api_token=TOKEN)
        async with api_client(app, TOKEN) as api:
            body = {"workflow_id": "ticket-triage", "input": {"text": "a"}, "idempotency_key": "k"}
            created = await api.post("/api/runs", json=body)
            assert created.status_code == 201, created.text
            run_id = created.json()["workflow_run_id"]
            before = await _run_count(api)
            conflict = await api.post("/api/runs", json={**body, "input": {"text": "b"}})
            assert conflict.status_code == 409, conflict.text
            assert conflict.json()["error"] == "idempotency_conflict"
            assert conflict.json()["field"] == "idempotency_key"
            assert conflict.json()["workflow_run_id"] == run_id
            assert await _run_count(api) == before

        # Temporal refuses the start (here: an unknown namespace): 503, and the stored run's id.
        config = env.client.config()
        config["namespace"] = "no-such-namespace"
        broken = Kernel(
            client=Client(**config), store=store, workflows=[triage_workflow()], task_queue="x"
        )
        async with api_client(create_app(broken, api_token=TOKEN), TOKEN) as api:
            answer = await api.post("/api/runs", json={**body, "idempotency_key": "k-2"})
            assert answer.status_code == 503, answer.text
            orphan = answer.json()["workflow_run_id"]
            assert answer.json()["error"] == "run_not_started"
            assert orphan in answer.json()["message"]
        assert (await store.get_run(orphan)).status == RunStatus.PENDING
        # The caller (or the recovery loop) starts it by its id: the same request again.
        async with api_client(app, TOKEN) as api:
            again = await api.post("/api/runs", json={**body, "idempotency_key": "k-2"})
            assert again.status_code == 201 and again.json()["workflow_run_id"] == orphan
        run = await kernel.wait_for_run(orphan, timeout=timedelta(seconds=30))
        assert run.status == RunStatus.COMPLETED


def _nested(levels: int) -> Any:
    """A JSON value nested ``levels`` deep (past the limit the store shares for every value)."""
    value: Any = "bottom"
    for _ in range(levels):
        value = {"next": value}
    return value


async def test_api_shapes_match_the_cli_and_repeats_return_stored_rows(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        app = create_app(kernel, api_token=TOKEN)
        async with api_client(app, TOKEN) as api:
            # Create takes annotations as attach does (attributes + actor), beside the envelopes.
            created = await api.post(
                "/api/runs",
                json={
                    "workflow_id": "ticket-triage",
                    "input": {"text": "urgent"},
                    "attributes": {"trigger.source": "api"},
                    "actor": {"kind": "service", "id": "helpdesk"},
                    "annotations": [{"attributes": {"trigger.reason": "test"}}],
                },
            )
            assert created.status_code == 201, created.text
            run_id = created.json()["workflow_run_id"]
            await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))
            triggers = await kernel.annotations.list(run_id, key_prefix="trigger.")
            # By the caller's principal; the body's actor is whom it acted for.
            assert {(a.key, a.value, a.on_behalf_of_id) for a in triggers} == {
                ("trigger.source", "api", "helpdesk"),
                ("trigger.reason", "test", None),
            }
            assert len({a.actor_id for a in triggers}) == 1

            # Rerun takes the CLI's name (--from-stage) as well as from_stage_id.
            for field in ("from_stage", "from_stage_id"):
                rerun = await api.post(f"/api/runs/{run_id}/rerun", json={field: "route"})
                assert rerun.status_code == 200, rerun.text
                assert rerun.json()["from_stage_id"] == "route"
                await kernel.wait_for_run(run_id, timeout=timedelta(seconds=30))

            # A repeated attach stores nothing new and answers with the rows stored first.
            body = {
                "attributes": {"review.outcome": "ok", "review.score": 3},
                "actor": {"kind": "user", "id": "alice"},
                "idempotency_key": "review-1",
            }
            first = await api.post(f"/api/runs/{run_id}/annotations", json=body)
            assert first.status_code == 201, first.text
            again = await api.post(f"/api/runs/{run_id}/annotations", json=body)
            assert again.status_code == 200, again.text
            assert sorted(row["id"] for row in again.json()["items"]) == sorted(
                row["id"] for row in first.json()["items"]
            )
            assert len(await kernel.annotations.list(run_id, key_prefix="review.")) == 2
