"""The viewer in a real headless browser: Debian's chromium driven by Playwright for Python.

A demo run (ticket triage with an approval and a rerun, so attempt 1 exists) gets one more
annotation whose value is a ``<script>``; the app is served by uvicorn on a free 127.0.0.1
port in this event loop; chromium loads the runs list and the run page, checks the timeline and
annotations, expands a payload, applies a key-prefix filter, checks that the stored script
never ran, and leaves screenshots in ``tests/artifacts/``. Playwright never downloads a
browser here: ``executable_path`` points at the Debian package (``.ci/ensure-chromium``
installs it, as ``.ci/run`` and ``make test`` call it; where it cannot, the test skips with
its one-line reason).
"""

from __future__ import annotations

import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.core.annotations import Actor
from engine.core.records import RunRecord, RunStatus
from engine.core.settings import Settings
from engine.runtime.kernel import Kernel
from engine.web import create_app, start_server
from tests.helpers import running_kernel
from tests.web.support import SCRIPT
from wfe_demo.triage import TRIAGE, run_triage_demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
UI = "http://localhost:8233"


def _require_chromium() -> None:
    """Get Debian's chromium as ``.ci/run`` does (``.ci/ensure-chromium``), or skip saying in
    one line what is missing. Never ``playwright install``: no browser download."""
    if CHROMIUM.exists():
        return
    script = Path(__file__).resolve().parents[2] / ".ci" / "ensure-chromium"
    done = subprocess.run([script], capture_output=True, text=True, check=False)
    if not CHROMIUM.exists():
        lines = done.stdout.strip().splitlines() or [f"{CHROMIUM} missing"]
        pytest.skip(lines[-1])


async def _wait(kernel: Kernel, run_id: str) -> RunRecord:
    return await kernel.wait_for_run(run_id, timeout=timedelta(seconds=60))


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # the API tests cover both
async def test_run_page_in_chromium(env: Any, store: Any) -> None:
    _require_chromium()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with running_kernel(env, store, TRIAGE) as kernel:
        namespace = kernel.client.namespace
        app = create_app(kernel, Settings(temporal_ui_url=UI, namespace=namespace))
        async with start_server(app) as server:
            kernel.viewer_url = server.url
            demo = await run_triage_demo(
                kernel, ui_url=UI, namespace=namespace, wait_for=_wait, echo=lambda _: None
            )
            assert demo.run.status == RunStatus.COMPLETED and demo.rerun is not None
            run_id = demo.run.id
            await kernel.annotations.attach(
                run_id,
                attributes={"review.comment": SCRIPT, "review.score": 3},
                actor=Actor(kind="user", id="mallory"),
                payload={"html": SCRIPT, "nested": {"list": [1, 2, 3]}},
            )

            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                try:
                    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                    problems: list[str] = []
                    page.on(
                        "console",
                        lambda m: problems.append(m.text) if m.type == "error" else None,
                    )
                    page.on("pageerror", lambda e: problems.append(str(e)))

                    # The runs list links to the run page.
                    await page.goto(f"{server.url}/?workflow={TRIAGE.id}")
                    row = page.locator(f'tr[data-run-id="{run_id}"]')
                    await row.wait_for()
                    assert await row.locator(".badge").inner_text() == "COMPLETED"
                    await page.screenshot(path=str(ARTIFACTS / "viewer-runs.png"))
                    await row.get_by_role("link", name=run_id).click()
                    await page.wait_for_url(f"{server.url}/runs/{run_id}")

                    # Header and the link to the run's workflow in the Temporal UI.
                    assert await page.locator("#run-status").inner_text() == "COMPLETED"
                    temporal = await page.locator("#temporal-link").get_attribute("href")
                    assert temporal == f"{UI}/namespaces/{namespace}/workflows/wfe-run-{run_id}"
                    rerun_link = page.get_by_role("link", name="rerun 1 ↗")
                    assert (await rerun_link.get_attribute("href") or "").endswith("-rerun-1")

                    # Timeline: every stage with status, attempt and a drawn bar.
                    stages = page.locator("#timeline tbody tr")
                    assert [
                        await stages.nth(i).get_attribute("data-stage")
                        for i in range(await stages.count())
                    ] == [stage for group in TRIAGE.get_execution_plan() for stage in group]
                    rerun_from = demo.rerun.from_stage_id
                    rerun = page.locator(f'#timeline tr[data-stage="{rerun_from}"]')
                    assert await rerun.get_attribute("data-attempt") == "1"
                    assert await rerun.get_attribute("data-status") == "COMPLETED"
                    assert await page.locator("#timeline .bar").count() == await stages.count()
                    bar = await page.locator("#timeline .bar").first.bounding_box()
                    assert bar is not None and bar["width"] > 1

                    # Annotations grouped by stage and attempt, the stored script as text.
                    groups = page.locator("section.group")
                    scopes = [
                        (
                            await groups.nth(i).get_attribute("data-scope-id"),
                            await groups.nth(i).get_attribute("data-attempt"),
                        )
                        for i in range(await groups.count())
                    ]
                    assert scopes[0] == ("", "0")  # the run's own annotations come first
                    assert ("classify", "0") in scopes and (rerun_from, "1") in scopes
                    run_group = groups.first
                    for key in ("trigger.source", "review.comment"):
                        assert await run_group.locator(f'tr[data-key="{key}"]').count() == 1
                    # The approval came with the external resume of the review stage.
                    review = groups.nth(scopes.index(("human-review", "0")))
                    assert await review.locator('tr[data-key="approval.approvers"]').count() == 1
                    comment = run_group.locator('tr[data-key="review.comment"] td.value')
                    assert await comment.inner_text() == SCRIPT
                    assert await page.evaluate("typeof window.pwned") == "undefined"

                    # Payloads are folded; opening one shows it, escaped.
                    payload = page.locator('tr[data-key="review.score"] details')
                    assert await payload.get_attribute("open") is None
                    await payload.locator("summary").click()
                    shown = await payload.locator("pre").inner_text()
                    assert SCRIPT in shown and '"list"' in shown
                    await page.screenshot(path=str(ARTIFACTS / "viewer-run.png"), full_page=True)

                    # Filter by key prefix: only decision.* rows remain, in their groups.
                    form = page.locator("form.filters")
                    await form.locator('input[name="key_prefix"]').fill("decision.")
                    await form.get_by_role("button", name="Filter").click()
                    await page.wait_for_url("**key_prefix=decision.**")
                    keys = await page.locator("tr.annotation").evaluate_all(
                        "rows => rows.map(r => r.dataset.key)"
                    )
                    assert keys and all(k.startswith("decision.") for k in keys), keys
                    assert await page.locator("section.group").count() == 1  # classify only
                    assert await page.locator('input[name="key_prefix"]').input_value() == (
                        "decision."
                    )
                    # Then by actor as well: the triage agent made every decision.* row.
                    await form.locator('select[name="actor"]').select_option("triage-agent")
                    await form.get_by_role("button", name="Filter").click()
                    await page.wait_for_url("**actor=triage-agent**")
                    assert await page.locator("tr.annotation").count() == len(keys)
                    await page.screenshot(
                        path=str(ARTIFACTS / "viewer-run-filtered.png"), full_page=True
                    )
                    assert await page.evaluate("typeof window.pwned") == "undefined"

                    # One chronological timeline of the run: stage starts and ends and every
                    # annotation, oldest first (the approval after the review stage started).
                    await page.goto(f"{server.url}/runs/{run_id}")
                    await page.locator("#view-time").click()
                    await page.wait_for_url("**view=time**")
                    rows = page.locator("#chronology tbody tr")
                    stamps = await rows.evaluate_all("rows => rows.map(r => r.cells[0].title)")
                    assert stamps and stamps == sorted(stamps)
                    order = await rows.evaluate_all(
                        "rows => rows.map(r => r.dataset.key || "
                        "(r.dataset.kind + ':' + r.dataset.where + ':' + r.dataset.what))"
                    )
                    assert order[0] == "run:(run):created"
                    review_started = order.index("stage:human-review:started")
                    assert order.index("approval.approvers") > review_started
                    assert order.index("review.comment") > order.index("run:(run):COMPLETED")
                    await page.screenshot(
                        path=str(ARTIFACTS / "viewer-run-chronological.png"), full_page=True
                    )
                    assert problems == []
                finally:
                    await browser.close()
