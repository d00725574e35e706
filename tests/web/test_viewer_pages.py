"""The viewer's HTML as served (both backends): filters, grouping, links, escaping, errors."""

from __future__ import annotations

import html as html_lib
import re

from engine.core.settings import Settings
from engine.web import create_app, views
from engine.web.views import CONTENT_SECURITY_POLICY
from tests.web.support import SCRIPT, UI, api_client, seed

TOKEN = "t0ken"


def _data(html: str, attribute: str) -> list[str]:
    return re.findall(rf'{attribute}="([^"]*)"', html)


async def test_runs_list_and_run_page(store, monkeypatch):
    s = await seed(store)
    app = create_app(store, Settings(temporal_ui_url=UI, namespace="prod"), api_token=TOKEN)
    async with api_client(app, TOKEN) as client:
        # A stage-scoped annotation of attempt 1, as a rerun's stage would write it.
        attached = await client.post(
            f"/api/runs/{s.r3.id}/annotations",
            json={
                "attributes": {"decision.outcome": "high"},
                "scope": "stage",
                "scope_id": "classify",
                "attempt": 1,
                "actor": {"kind": "agent", "id": "triage-agent"},
            },
        )
        assert attached.status_code == 201

        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert _data(page.text, "data-run-id") == [s.r3.id, s.r2.id, s.r1.id]
        assert f"{UI}/namespaces/prod/workflows/wfe-run-{s.r1.id}" in page.text
        filtered = await client.get("/", params={"status": "CANCELLED"})
        assert _data(filtered.text, "data-run-id") == [s.r2.id]
        by_workflow = await client.get("/", params={"workflow": "beta"})
        assert _data(by_workflow.text, "data-run-id") == [s.r3.id]
        by_annotation = await client.get(
            "/", params={"annotation": ["decision.outcome=low", "decision.used_fallback=true"]}
        )
        assert _data(by_annotation.text, "data-run-id") == [s.r1.id]
        assert 'value="decision.used_fallback=true"' in by_annotation.text  # kept in the form
        # Paging: "Older runs" carries the filters and the cursor.
        monkeypatch.setattr(views, "RUNS_PER_PAGE", 2)
        first = (await client.get("/", params={"annotation": "decision.outcome=low"})).text
        assert _data(first, "data-run-id") == [s.r3.id, s.r1.id]
        newest = await client.get("/", params={"workflow": "alpha"})
        assert _data(newest.text, "data-run-id") == [s.r2.id, s.r1.id]
        (older,) = re.findall(r'<a href="([^"]*)" rel="next">', newest.text)
        older = html_lib.unescape(older)
        assert "workflow=alpha" in older and "cursor=" in older
        last = await client.get(older)
        assert _data(last.text, "data-run-id") == []
        assert 'rel="next"' not in last.text and "← Newest" in last.text
        monkeypatch.undo()

        bad = await client.get("/", params={"annotation": "no-equals"})
        assert bad.status_code == 400 and "must be key=value" in bad.text
        assert (await client.get("/", params={"status": "NOPE"})).status_code == 400
        assert (await client.get("/", params={"cursor": "x"})).status_code == 400

        run = await client.get(f"/runs/{s.r1.id}")
        assert run.status_code == 200
        html = run.text
        # The stored <script> is text, never markup; the page has no script element at all.
        assert SCRIPT not in html and "<script" not in html.lower()
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html
        assert "&lt;b&gt;bold&lt;/b&gt;" in html  # payloads are escaped too
        # The last execution's duration and the run's age, each under its own name.
        assert 'class="label">Last execution<' in html and 'class="label">Run age<' in html
        assert 'class="label">Duration<' not in html
        assert run.headers["content-security-policy"].startswith("default-src 'none'")
        assert f'href="{UI}/namespaces/prod/workflows/wfe-run-{s.r1.id}"' in html
        assert sorted(_data(html, "data-key")) == sorted(
            [
                "trigger.source",
                "trigger.reason",
                "decision.outcome",
                "decision.used_fallback",
                "crm.sla_hours",
            ]
        )
        assert "<details><summary>payload</summary>" in html

        prefixed = (await client.get(f"/runs/{s.r1.id}", params={"key_prefix": "trigger."})).text
        assert sorted(_data(prefixed, "data-key")) == ["trigger.reason", "trigger.source"]
        assert "(2 of 5)" in prefixed
        by_actor = (await client.get(f"/runs/{s.r1.id}", params={"actor": "triage-agent"})).text
        assert sorted(_data(by_actor, "data-key")) == [
            "crm.sla_hours",
            "decision.outcome",
            "decision.used_fallback",
        ]
        both = await client.get(
            f"/runs/{s.r1.id}", params={"actor": "bob", "key_prefix": "decision."}
        )
        assert _data(both.text, "data-key") == [] and "No annotations match" in both.text

        # Grouped by scope and attempt: the run first, then stages in timeline order.
        grouped = (await client.get(f"/runs/{s.r3.id}")).text
        groups = re.findall(
            r'<section class="group" id="[^"]*" data-scope="([^"]*)" '
            r'data-scope-id="([^"]*)" data-attempt="(\d+)"',
            grouped,
        )
        assert groups == [("run", "", "0"), ("stage", "classify", "1")]
        assert "Stage Classify (classify)" in grouped
        assert _data(grouped, "data-stage") == ["classify"]

        # One chronological timeline: the run's and stages' events and every annotation, in
        # time order (the attach after the run started comes after it), filters kept.
        assert 'id="view-time"' in grouped
        timed = (await client.get(f"/runs/{s.r3.id}", params={"view": "time"})).text
        kinds = re.findall(r'<tr class="(?:event|annotation)" data-kind="([^"]*)"', timed)
        assert 'id="chronology"' in timed and '<section class="group"' not in timed
        order = [
            f"{kind}:{what}"
            for kind, what in re.findall(r'data-kind="([^"]*)" data-(?:what|key)="([^"]*)"', timed)
        ]
        assert order == [
            "run:created",
            "annotation:decision.outcome",
            "run:started",
            "annotation:decision.outcome",
        ], order  # (classify is only opened: no start of it yet)
        assert kinds.count("annotation") == 2
        stamps = re.findall(r'title="(\d{4}-[^"]*)">', timed)
        assert stamps == sorted(stamps)
        only = (
            await client.get(f"/runs/{s.r1.id}", params={"view": "time", "key_prefix": "trigger."})
        ).text
        assert sorted(_data(only, "data-key")) == ["trigger.reason", "trigger.source"]
        assert 'name="view" value="time"' in only  # the filter form keeps the view

        missing = await client.get("/runs/no-such-run")
        assert missing.status_code == 404
        assert "Run not found" in missing.text and missing.headers["content-type"].startswith(
            "text/html"
        )
        assert (await client.get("/nowhere")).status_code == 404
