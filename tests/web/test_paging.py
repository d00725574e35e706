"""Bounded responses over real HTTP: a run with 5,000 log lines, its events and annotations
come in pages (a default size, a maximum, keyset cursors), in the API and in the viewer."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from engine.core.annotations import build_drafts
from engine.core.ids import new_id
from engine.core.settings import Settings
from engine.store.annotation_rows import RowContext
from engine.store.models import LOGS
from engine.web import create_app, start_server
from tests.web.support import UI, seed

LINES = 5000


async def _many_logs(store: Any, run_id: str) -> list[str]:
    """5,000 log lines, several sharing a timestamp (the cursor must break ties by id)."""
    start = datetime(2026, 12, 1, tzinfo=UTC)
    rows = [
        {
            "id": new_id(),
            "created_at": start + timedelta(milliseconds=index // 3),
            "workflow_run_id": run_id,
            "stage_id": "classify",
            "level": "INFO",
            "message": f"line {index}",
            "metadata": None,
        }
        for index in range(LINES)
    ]
    async with store.engine.begin() as connection:
        await connection.execute(LOGS.insert(), rows)
    return [row["id"] for row in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]


async def test_paging_through_5000_log_lines_events_and_annotations(store: Any) -> None:
    s = await seed(store)
    expected = await _many_logs(store, s.r1.id)
    for index in range(7):
        drafts = build_drafts({f"review.{index}": index, f"check.{index}": True}, emit_event=True)
        await store.attach_annotations(
            s.r1.id, drafts, RowContext(s.r1.id, "run"), causation_id=f"c{index}"
        )
    app = create_app(store, Settings(temporal_ui_url=UI, namespace="prod"))
    async with start_server(app) as server, httpx.AsyncClient(base_url=server.url) as http:
        logs = f"/api/runs/{s.r1.id}/logs"
        first = (await http.get(logs)).json()
        assert len(first["items"]) == 200 and first["next_cursor"]  # the default page size

        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = (await http.get(logs, params=params)).json()
            seen.extend(item["id"] for item in page["items"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == expected and pages in (5, 6)  # all, once each, in order

        for params, field in [
            ({"limit": 1001}, "limit"),
            ({"limit": 0}, "limit"),
            ({"limit": "99999999999999999999"}, "limit"),
            ({"cursor": "garbage"}, "cursor"),
        ]:
            for path in (logs, f"/api/runs/{s.r1.id}/events", f"/api/runs/{s.r1.id}/annotations"):
                answer = await http.get(path, params=params)
                assert answer.status_code == 422, (path, params, answer.text)
                assert answer.json()["field"] == field

        events: list[int] = []
        cursor = None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"/api/runs/{s.r1.id}/events", params=params)).json()
            events.extend(item["sequence"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert events == sorted(events) and len(events) == len(set(events)) == 1 + 14

        keys: list[str] = []
        cursor = None
        while True:
            params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
            page = (await http.get(f"/api/runs/{s.r1.id}/annotations", params=params)).json()
            assert len(page["items"]) <= 4
            keys.extend(item["id"] for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(keys) == len(set(keys)) == 5 + 14

        # The viewer shows 200 log lines and links to the next 200.
        viewer = await http.get(f"/runs/{s.r1.id}")
        assert viewer.status_code == 200
        assert len(re.findall(r">line \d+<", viewer.text)) == 200
        link = re.search(r'class="next-logs" href="([^"]+)"', viewer.text)
        assert link is not None
        following = await http.get(link.group(1).replace("&amp;", "&"))
        assert following.status_code == 200
        assert len(re.findall(r">line \d+<", following.text)) == 200
        assert "line 0<" not in following.text
        altered = await http.get(f"/runs/{s.r1.id}", params={"logs_cursor": "x"})
        assert altered.status_code == 400
