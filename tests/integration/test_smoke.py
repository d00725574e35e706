from datetime import timedelta

from engine import RunCreate, RunStatus
from tests.helpers import running_kernel, triage_workflow


async def test_triage_run_completes(env, store):
    async with running_kernel(env, store, triage_workflow()) as kernel:
        created = await kernel.dispatch(
            RunCreate(workflow_id="ticket-triage", input={"text": "urgent: printer"})
        )
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=20))
        assert run.status == RunStatus.COMPLETED, await kernel.list_stages(run.id)
        assert run.output == {"route": "queue-high", "seen": ["classify", "enrich", "notify"]}
