"""The HTTP API's reads and annotation writes on both backends: filters, paging, errors, auth."""

from __future__ import annotations

from typing import Any

from engine.core.settings import Settings
from engine.web import create_app
from tests.web.support import SCRIPT, UI, Seeded, api_client, seed

TOKEN = "s3cret-token"


def _settings() -> Settings:
    return Settings(temporal_ui_url=UI + "/", namespace="prod")


def _ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["items"]]


async def _error(response: Any, status: int, field: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"error", "message"}, body
    assert body.get("field") == field, body
    return body


async def test_list_runs_with_every_filter_and_paging(store):
    s: Seeded = await seed(store)
    app = create_app(store, _settings())
    async with api_client(app) as api:

        async def ids(**params: Any) -> list[str]:
            response = await api.get("/api/runs", params=params)
            assert response.status_code == 200, response.text
            return _ids(response.json())

        assert await ids() == [s.r3.id, s.r2.id, s.r1.id]  # newest first
        assert await ids(workflow_id="alpha") == [s.r2.id, s.r1.id]
        assert await ids(workflow_id="nope") == []
        assert await ids(status="CANCELLED") == [s.r2.id]
        assert await ids(status=["PENDING", "RUNNING"]) == [s.r3.id, s.r1.id]
        assert await ids(created_after=s.r2.created_at.isoformat()) == [s.r3.id, s.r2.id]
        assert await ids(created_before=s.r2.created_at.isoformat()) == [s.r1.id]
        # A time without a zone is UTC.
        naive = s.r2.created_at.replace(tzinfo=None).isoformat()
        assert await ids(created_after=naive) == [s.r3.id, s.r2.id]
        assert await ids(
            created_after=s.r1.created_at.isoformat(), created_before=s.r3.created_at.isoformat()
        ) == [s.r2.id, s.r1.id]

        # Annotation filters compare typed values, as count_runs does.
        assert await ids(annotation="decision.outcome=low") == [s.r3.id, s.r1.id]
        assert await ids(annotation=["decision.outcome=low", "decision.used_fallback=true"]) == [
            s.r1.id
        ]
        assert await ids(annotation="decision.used_fallback=false") == [s.r2.id]
        assert await ids(annotation="crm.sla_hours=4") == [s.r1.id]
        assert await ids(annotation='crm.sla_hours="4"') == []  # the string "4" is not 4
        assert await ids(annotation=f"trigger.source={SCRIPT}") == [s.r1.id]
        assert await ids(workflow_id="beta", annotation="decision.outcome=low") == [s.r3.id]
        kernel_annotations = app.state.wfe.annotations
        for match in ({"decision.outcome": "low"}, {"decision.used_fallback": False}):
            listed = await ids(annotation=[f"{k}={str(v).lower()}" for k, v in match.items()])
            assert len(listed) == await kernel_annotations.count_runs(match=match)

        # Keyset paging, newest first; the last full page still hands out a cursor.
        seen: list[str] = []
        cursor = None
        for _ in range(4):
            params: dict[str, Any] = {"limit": 1}
            if cursor:
                params["cursor"] = cursor
            body = (await api.get("/api/runs", params=params)).json()
            seen += _ids(body)
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [s.r3.id, s.r2.id, s.r1.id]
        assert cursor is None
        page = (await api.get("/api/runs", params={"limit": 2, "status": "PENDING"})).json()
        assert _ids(page) == [s.r1.id] and page["next_cursor"] is None

        # Bad requests: 422 naming the field, JSON body.
        for params, field in [
            ({"limit": 0}, "limit"),
            ({"limit": 1001}, "limit"),
            ({"status": "NOPE"}, "status"),
            ({"created_after": "yesterday"}, "created_after"),
            ({"annotation": "no-equals-sign"}, "annotation"),
            ({"annotation": "=x"}, "annotation"),
            ({"annotation": 'k={"a": 1}'}, "annotation"),
            ({"annotation": "k=null"}, "annotation"),
            ({"cursor": "not-a-cursor"}, "cursor"),
        ]:
            await _error(await api.get("/api/runs", params=params), 422, field)
        assert (await api.get("/api/runs", params={"limit": 1000})).status_code == 200


async def test_run_detail_stages_logs_events_and_unknown_runs(store):
    s = await seed(store)
    async with api_client(create_app(store, _settings())) as api:
        detail = (await api.get(f"/api/runs/{s.r3.id}")).json()
        assert detail["run"]["id"] == s.r3.id
        assert detail["run"]["status"] == "RUNNING"
        assert [st["stage_id"] for st in detail["stages"]] == ["classify"]
        assert detail["links"] == {
            "viewer": f"/runs/{s.r3.id}",
            "temporal_ui": f"{UI}/namespaces/prod/workflows/wfe-run-{s.r3.id}",
            "temporal_ui_executions": {"0": f"{UI}/namespaces/prod/workflows/wfe-run-{s.r3.id}"},
        }
        stages = (await api.get(f"/api/runs/{s.r3.id}/stages")).json()["items"]
        assert [(st["id"], st["status"]) for st in stages] == [(s.stage.id, "PENDING")]
        assert (await api.get(f"/api/runs/{s.r1.id}/logs")).json() == {
            "items": [],
            "next_cursor": None,
        }
        events = (await api.get(f"/api/runs/{s.r2.id}/events")).json()["items"]
        assert [e["event_type"] for e in events] == ["workflow:created", "workflow:cancelled"]
        assert events[1]["payload"]["reason"] == "duplicate"
        for path in ["", "/stages", "/logs", "/events", "/annotations"]:
            body = await _error(await api.get(f"/api/runs/missing-run{path}"), 404, "run_id")
            assert body["error"] == "run_not_found"
            assert "missing-run" in body["message"]
        await _error(await api.get("/api/nowhere"), 404, None)


async def test_annotation_list_filters_and_cross_run_query(store):
    s = await seed(store)
    app = create_app(store, _settings(), api_token=TOKEN)
    async with api_client(app, TOKEN) as api:
        stage_rows = await api.post(
            f"/api/runs/{s.r3.id}/annotations",
            json={
                "attributes": {"decision.outcome": "low", "decision.confidence": 0.9},
                "actor": {"kind": "agent", "id": "triage-agent"},
                "scope": "stage",
                "scope_id": "classify",
                "workflow_stage_record_id": s.stage.id,
                "attempt": 1,
            },
        )
        assert stage_rows.status_code == 201, stage_rows.text
        later = stage_rows.json()["items"][0]["created_at"]

        async def keys(run_id: str, **params: Any) -> list[str]:
            response = await api.get(f"/api/runs/{run_id}/annotations", params=params)
            assert response.status_code == 200, response.text
            return [a["key"] for a in response.json()["items"]]

        everything = await keys(s.r1.id)
        assert sorted(everything) == sorted(
            [
                "trigger.source",
                "trigger.reason",
                "decision.outcome",
                "decision.used_fallback",
                "crm.sla_hours",
            ]
        )
        listed = (await api.get(f"/api/runs/{s.r1.id}/annotations")).json()["items"]
        script_row = next(a for a in listed if a["key"] == "trigger.source")
        assert script_row["value"] == SCRIPT  # stored and served as given; the viewer escapes
        payload_row = next(a for a in listed if a["key"] == "crm.sla_hours")
        assert payload_row["payload"] == {"raw": [1, 2], "note": "<b>bold</b>"}
        assert payload_row["value"] == 4

        assert await keys(s.r1.id, key="crm.sla_hours") == ["crm.sla_hours"]
        assert sorted(await keys(s.r1.id, key_prefix="decision.")) == [
            "decision.outcome",
            "decision.used_fallback",
        ]
        assert await keys(s.r1.id, key_prefix="Decision.") == []  # case-sensitive
        assert sorted(await keys(s.r1.id, actor_id="bob")) == ["trigger.reason", "trigger.source"]
        assert len(await keys(s.r1.id, actor_kind="agent")) == 3
        assert len(await keys(s.r3.id, scope="run")) == 1
        assert sorted(await keys(s.r3.id, scope="stage")) == [
            "decision.confidence",
            "decision.outcome",
        ]
        assert len(await keys(s.r3.id, scope_id="classify")) == 2
        assert await keys(s.r3.id, attempt=1, key="decision.outcome") == ["decision.outcome"]
        assert await keys(s.r3.id, attempt=0) == ["decision.outcome"]
        assert len(await keys(s.r3.id, since=later)) == 2
        assert await keys(s.r3.id, until=s.r3.created_at.isoformat()) == ["decision.outcome"]
        assert len(await keys(s.r1.id, limit=2)) == 2
        for params, field in [({"limit": 1001}, "limit"), ({"attempt": -1}, "attempt")]:
            await _error(
                await api.get(f"/api/runs/{s.r1.id}/annotations", params=params), 422, field
            )

        # The cross-run query: key and typed value, prefix, workflow, actor, time, paging.
        async def query(**params: Any) -> dict[str, Any]:
            response = await api.get("/api/annotations", params=params)
            assert response.status_code == 200, response.text
            return response.json()

        low = await query(key="decision.outcome", value="low")
        assert sorted(a["workflow_run_id"] for a in low["items"]) == sorted(
            [s.r1.id, s.r3.id, s.r3.id]
        )
        beta = await query(key="decision.outcome", value="low", workflow_id="beta")
        assert len(beta["items"]) == 2
        assert len((await query(key="decision.used_fallback", value="true"))["items"]) == 1
        assert len((await query(key_prefix="trigger."))["items"]) == 2
        # The rows posted above were written by the token's principal, for triage-agent.
        assert len((await query(key_prefix="decision.", actor_id="triage-agent"))["items"]) == 4
        assert len((await query(key_prefix="decision.", actor_id="api"))["items"]) == 2
        assert len((await query(key_prefix="decision.", since=later))["items"]) == 2
        first = await query(key_prefix="decision.", limit=2)
        assert len(first["items"]) == 2 and first["next_cursor"]
        rest = await query(key_prefix="decision.", limit=1000, cursor=first["next_cursor"])
        all_ids = [a["id"] for a in first["items"] + rest["items"]]
        assert len(all_ids) == len(set(all_ids)) == 7
        for params, field in [
            ({"key": "k", "value": "[1, 2]"}, "value"),
            ({"cursor": "garbage"}, "cursor"),
            ({"limit": 1001}, "limit"),
            ({"since": "soon"}, "since"),
        ]:
            await _error(await api.get("/api/annotations", params=params), 422, field)


async def test_writes_need_the_token_and_attach_is_all_or_nothing(store):
    s = await seed(store)
    run_path = f"/api/runs/{s.r1.id}"
    writes = [
        ("/api/runs", {"workflow_id": "alpha", "input": {}}),
        (f"{run_path}/cancel", {}),
        (f"{run_path}/rerun", {"from_stage_id": "classify"}),
        (f"{run_path}/annotations", {"attributes": {"review.ok": True}}),
    ]

    # No token configured: every write is refused with 403, whatever the header or body says.
    async with api_client(create_app(store, _settings()), token="anything") as api:
        for path, body in [*writes, ("/api/runs", {"bogus": 1})]:
            answer = await _error(await api.post(path, json=body), 403, None)
            assert answer["error"] == "writes_disabled"
            assert "WFE_API_TOKEN" in answer["message"]
        assert (await api.get(run_path)).status_code == 200  # reads from this machine: open

    app = create_app(store, _settings(), api_token=TOKEN)
    async with api_client(app) as anonymous, api_client(app, "wrong") as wrong:
        for path, body in writes:
            for client in (anonymous, wrong):
                response = await client.post(path, json=body)
                answer = await _error(response, 401, "Authorization")
                assert answer["error"] == "unauthorized"
                assert response.headers["www-authenticate"] == "Bearer"
        basic = await anonymous.post(
            writes[3][0], json=writes[3][1], headers={"Authorization": f"Basic {TOKEN}"}
        )
        await _error(basic, 401, "Authorization")
        # With a token configured, reads need it too.
        assert (await anonymous.get(f"{run_path}/annotations")).status_code == 401
    assert len(await store.list_annotations(s.r1.id, _no_filters())) == 5  # nothing written

    async with api_client(app, TOKEN) as api:
        attach = f"{run_path}/annotations"
        ok = await api.post(
            attach,
            json={
                "attributes": {"review.ok": True, "review.note": "<i>fine</i>"},
                "actor": {"kind": "user", "id": "alice", "version": "1"},
                "payload": {"form": {"answers": [1, 2]}},
                "idempotency_key": "review-1",
                "emit_event": True,
            },
        )
        assert ok.status_code == 201, ok.text
        rows = ok.json()["items"]
        assert [(r["key"], r["value"], r["actor_id"], r["on_behalf_of_id"]) for r in rows] == [
            ("review.ok", True, "api", "alice"),
            ("review.note", "<i>fine</i>", "api", "alice"),
        ]
        again = await api.post(
            attach, json={"attributes": {"review.ok": True}, "idempotency_key": "review-1"}
        )
        # Deduplicated: nothing new, and the answer is the row stored the first time.
        assert again.status_code == 200, again.text
        assert again.json()["items"] == [rows[0]]
        events = (await api.get(f"{run_path}/events")).json()["items"]
        assert [e["event_type"] for e in events].count("annotation:created") == 2

        before = len(await store.list_annotations(s.r1.id, _no_filters()))
        for body, field in [
            ({"attributes": {"good.key": 1, "": 2}}, "attributes"),
            ({"attributes": {"k": 1}, "scope": "x" * 65}, "scope"),
            ({"attributes": {"k": 1}, "actor": {"kind": "user"}}, "actor.id"),
            ({"attributes": {"k": 1}, "idempotency_key": "x" * 256}, "idempotency_key"),
            ({"attributes": {}}, "attributes"),
            ({"attributes": {"k": 1}, "attempt": -1}, "attempt"),
            ({"attributes": {"k": 1}, "surprise": True}, "surprise"),
            (
                {"attributes": {"k": 1}, "workflow_stage_record_id": "nope"},
                "workflow_stage_record_id",
            ),
            ({}, "attributes"),
            ({"attributes": "not-a-dict"}, "attributes"),
        ]:
            await _error(await api.post(attach, json=body), 422, field)
        bad_json = await api.post(
            attach, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status_code == 422 and bad_json.json()["error"] == "invalid_request"
        assert len(await store.list_annotations(s.r1.id, _no_filters())) == before

        await _error(
            await api.post("/api/runs/missing/annotations", json={"attributes": {"k": 1}}),
            404,
            "run_id",
        )
        # A store-only app has no Temporal client: run commands answer 503 (after auth).
        answer = await _error(await api.post("/api/runs", json=writes[0][1]), 503, None)
        assert answer["error"] == "no_temporal_client"
        assert (await api.post(f"{run_path}/cancel")).status_code == 503


def _no_filters() -> Any:
    from engine.store.contract import AnnotationFilters

    return AnnotationFilters()


async def test_openapi_document(store):
    async with api_client(create_app(store, _settings())) as api:
        document = (await api.get("/openapi.json")).json()
        assert document["info"]["title"] == "wfe provenance API"
        assert set(document["paths"]) == {
            "/api/runs",
            "/api/runs/{run_id}",
            "/api/runs/{run_id}/stages",
            "/api/runs/{run_id}/logs",
            "/api/runs/{run_id}/events",
            "/api/runs/{run_id}/annotations",
            "/api/runs/{run_id}/cancel",
            "/api/runs/{run_id}/rerun",
            "/api/runs/{run_id}/fork",
            "/api/runs/{run_id}/stages/{stage_id}/decision",
            "/api/approvals",
            "/api/annotations",
        }
        for method in ("get", "post"):  # reads need a token too, once the server has tokens
            assert document["paths"]["/api/runs"][method]["security"] == [{"HTTPBearer": []}]
        listed = {p["name"] for p in document["paths"]["/api/runs"]["get"]["parameters"]}
        assert listed == {
            "workflow_id",
            "status",
            "created_after",
            "created_before",
            "annotation",
            "limit",
            "cursor",
        }
        error = document["paths"]["/api/runs/{run_id}"]["get"]["responses"]["404"]
        assert error["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
        assert (await api.get("/docs")).status_code == 200
