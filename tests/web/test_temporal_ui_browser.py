"""The Temporal Web UI as a Temporal user sees a run, in headless chromium.

A dev server with its UI (``engine.cli.devserver``, as ``wfe dev`` starts it) runs one triage run;
the workflow's page shows the engine workflow's id as Workflow Type, the run's input, its
output as the result and the link to the provenance viewer, and the workflows list filters
by type. Screenshots go to ``tests/artifacts/``.
"""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from engine import Kernel, RunCreate, create_worker
from engine.cli.devserver import DevServer
from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from tests.helpers import triage_workflow
from tests.web.test_viewer_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _require_chromium

VIEWER = "http://localhost:8234"


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)  # nothing backend-specific here
async def test_workflow_page_in_the_temporal_ui(store: SqlStore) -> None:
    _require_chromium()
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with DevServer(ui=True) as server:
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        kernel = Kernel(
            client=client,
            store=store,
            workflows=[triage_workflow()],
            task_queue=f"tq-{uuid.uuid4()}",
            viewer_url=VIEWER,
        )
        async with create_worker(kernel):
            created = await kernel.dispatch(
                RunCreate(workflow_id="ticket-triage", input={"text": "urgent: VPN down"})
            )
            run_id = created.workflow_run_id
            await kernel.wait_for_run(run_id)
            await client.get_workflow_handle(temporal_workflow_id(run_id)).result()

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 1100})
                base = f"{server.ui_url}/namespaces/default/workflows"
                await page.goto(f"{base}/{temporal_workflow_id(run_id)}")
                body = page.locator("body")
                # The summary names the engine workflow and the run; the type is the id.
                await page.get_by_text("ticket-triage").first.wait_for(timeout=30_000)
                await page.get_by_text("VPN down").first.wait_for(timeout=30_000)
                await page.screenshot(path=str(ARTIFACTS / "temporal-ui-run.png"), full_page=True)
                text = await body.inner_text()
                assert "Workflow Type\nticket-triage" in text
                assert "queue-high" in text  # the result: the run's output
                assert "projected_keys" not in text.split("VPN down")[0]  # user input first
                # The static details, under "User Metadata", link to the run's viewer page.
                await page.get_by_text("User Metadata").first.click()
                # (The UI renders the details' markdown in an iframe.)
                details = page.frame_locator("#user-metadata-details")
                link = details.get_by_text(f"{VIEWER}/runs/{run_id}")
                await link.first.wait_for(timeout=30_000)
                await page.screenshot(path=str(ARTIFACTS / "temporal-ui-details.png"))
                query = "WorkflowType%3D%22ticket-triage%22"
                await page.goto(f"{base}?query={query}")
                await page.get_by_text(temporal_workflow_id(run_id)).first.wait_for(timeout=30_000)
                await page.screenshot(path=str(ARTIFACTS / "temporal-ui-list.png"))
            finally:
                await browser.close()
