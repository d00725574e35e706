"""The approvals inbox in headless chromium: sign in, approve and reject from the page (plain
forms, no script), refused forgeries, and a fork's lineage both ways. Screenshots go to
``tests/artifacts/``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from engine import RunCreate, RunFork, RunStatus
from engine.core.settings import Settings
from engine.web import create_app, start_server
from engine.web.auth import tokens_from_env
from tests.helpers import running_kernel
from tests.integration.test_approvals import _waiting, approval_workflow
from tests.web.test_viewer_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _require_chromium

LEAD_TOKEN, READER_TOKEN = "lead-token-1", "reader-token-1"
TOKENS = f"lead:{LEAD_TOKEN}:read+write+approve, reader:{READER_TOKEN}:read"
UI = "http://localhost:8233"


async def _status_shown(page: Any, status: str) -> None:
    for _ in range(100):
        if await page.locator("#run-status").inner_text() == status:
            return
        await page.wait_for_timeout(100)
        await page.reload()
    raise AssertionError(f"the run page never showed {status}")


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the API tests cover both
async def test_inbox_approve_reject_and_lineage_in_chromium(env: Any, store: Any) -> None:
    _require_chromium()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with running_kernel(env, store, approval_workflow()) as kernel:
        settings = Settings(temporal_ui_url=UI, namespace=kernel.client.namespace)
        app = create_app(kernel, settings, tokens=tokens_from_env({"WFE_API_TOKENS": TOKENS}))
        first = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        second = (await kernel.dispatch(RunCreate(workflow_id="refund", input={}))).workflow_run_id
        await _waiting(kernel, first)
        await _waiting(kernel, second)
        async with start_server(app) as server, async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                # The viewer's pages need the read right: the browser sends Basic credentials,
                # which never admit a decision (only the signed-in session does).
                context = await browser.new_context(
                    viewport={"width": 1400, "height": 900},
                    http_credentials={"username": "reader", "password": READER_TOKEN},
                )
                page = await context.new_page()
                problems: list[str] = []
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))

                # Without a session the inbox lists, but offers no forms.
                await page.goto(f"{server.url}/approvals")
                rows = page.locator("#approvals tbody tr")
                assert await rows.count() == 2
                assert await page.locator("form.decide").count() == 0
                await page.locator("#sign-in").click()
                # A token without the approve right is turned away.
                await page.locator('#login input[name="token"]').fill(READER_TOKEN)
                await page.locator("#login").get_by_role("button", name="Sign in").click()
                assert "reader may not approve" in await page.locator(".error").inner_text()
                await page.locator('#login input[name="token"]').fill(LEAD_TOKEN)
                await page.locator("#login").get_by_role("button", name="Sign in").click()
                await page.wait_for_url(f"{server.url}/approvals")
                assert await page.locator("#reviewer").inner_text() == "lead"
                row = page.locator(f'#approvals tr[data-run-id="{first}"]')
                assert "decision.outcome" in await row.inner_text()
                assert "support-leads" in await row.inner_text()
                await page.screenshot(path=str(ARTIFACTS / "viewer-approvals.png"), full_page=True)

                # Forged posts: no CSRF token, another site's Origin, no session at all.
                cookie = {c["name"]: c["value"] for c in await context.cookies()}
                form = {"run_id": first, "stage_id": "review", "decision": "approve"}
                async with httpx.AsyncClient(base_url=server.url, cookies=cookie) as http:
                    # The lead's token as Basic credentials, without the session: refused.
                    basic = await httpx.AsyncClient(base_url=server.url).post(
                        "/approvals/decide", data=form, auth=("lead", LEAD_TOKEN)
                    )
                    assert basic.status_code == 401
                    assert (await http.post("/approvals/decide", data=form)).status_code == 403
                    csrf = await row.locator('input[name="csrf"]').get_attribute("value")
                    foreign = await http.post(
                        "/approvals/decide",
                        data={**form, "csrf": csrf or ""},
                        headers={"Origin": "https://evil.example"},
                    )
                    assert foreign.status_code == 403
                async with httpx.AsyncClient(base_url=server.url) as anonymous:
                    answer = await anonymous.post("/approvals/decide", data=form)
                    assert answer.status_code == 401
                assert (await kernel.get_run(first)).status == RunStatus.RUNNING

                # Approve from the page: the run completes, the annotations show who and when.
                await row.locator('input[name="comment"]').fill("refund is right")
                await row.get_by_role("button", name="Approve").click()
                await page.wait_for_url(f"**/runs/{first}?decided=*")
                assert "approved review" in await page.locator("#decided").inner_text()
                await _status_shown(page, "COMPLETED")
                approvers = page.locator('tr[data-key="approval.approvers"]')
                assert await approvers.count() == 1
                assert "principal:lead" in await approvers.inner_text()
                comment = page.locator('tr[data-key="approval.comment"] td.value')
                assert await comment.inner_text() == "refund is right"
                await page.screenshot(
                    path=str(ARTIFACTS / "viewer-approved-run.png"), full_page=True
                )

                # Reject the other one; without a comment the page says why not.
                await page.goto(f"{server.url}/approvals")
                row = page.locator(f'#approvals tr[data-run-id="{second}"]')
                await row.get_by_role("button", name="Reject").click()
                assert "say why" in await page.content()
                assert [p for p in problems if "422" in p] == problems and len(problems) == 1
                problems.clear()  # that refusal was the point
                await page.goto(f"{server.url}/approvals")
                await row.locator('input[name="comment"]').fill("amount too high")
                await row.get_by_role("button", name="Reject").click()
                await page.wait_for_url(f"**/runs/{second}?decided=*")
                await _status_shown(page, "FAILED")
                await page.goto(f"{server.url}/approvals")
                assert await page.locator("#no-approvals").count() == 1

                # Fork the rejected run: lineage shows both ways.
                fork = await kernel.dispatch(
                    RunFork(workflow_run_id=second, from_stage_id="review", reason="appeal")
                )
                await _waiting(kernel, fork.workflow_run_id)
                await page.goto(f"{server.url}/runs/{fork.workflow_run_id}")
                source = page.locator("#forked-from")
                assert "appeal" in await source.inner_text()
                await source.get_by_role("link", name=second).click()
                await page.wait_for_url(f"{server.url}/runs/{second}")
                forks = page.locator("#forks")
                assert fork.workflow_run_id in await forks.inner_text()
                await page.screenshot(
                    path=str(ARTIFACTS / "viewer-fork-source.png"), full_page=True
                )
                await forks.get_by_role("link", name=fork.workflow_run_id).click()
                await page.wait_for_url(f"{server.url}/runs/{fork.workflow_run_id}")
                copied = page.locator('#timeline tr[data-stage="propose"] .copied')
                assert await copied.count() == 1
                assert (
                    "waiting for support-leads"
                    in await page.locator('#timeline tr[data-stage="review"]').inner_text()
                )
                await page.screenshot(path=str(ARTIFACTS / "viewer-fork.png"), full_page=True)
                assert problems == []
            finally:
                await browser.close()
