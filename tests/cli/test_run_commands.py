"""``wfe worker`` as a subprocess, driven by ``wfe run create|rerun|cancel|show``.

Real Temporal (the session dev server), both side-store backends, the default (demo)
workflows, and the worker's outbox relay printing events.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.runtime.kernel import temporal_workflow_id
from engine.store import SqlStore
from engine.store.runs import NewRun
from tests.cli.support import (
    Background,
    Wfe,
    approve_waiting_review,
    assert_one_line_error,
    clean_env,
    temporal_address,
    wfe_process,
)
from wfe_demo.triage import DEMO_TICKET

# The search stays SUSPENDED about a second, long enough for --wait's progress to show it.
SEARCH_QUICKLY = json.dumps({"similar-tickets": {"poll_interval": 0.5}})


async def test_worker_and_run_lifecycle(
    wfe: Wfe,
    env: Any,
    store: SqlStore,
    tmp_path: Path,
    background: Callable[..., Background],
) -> None:
    opts = [
        "--temporal-address", temporal_address(env),
        "--task-queue", f"tq-{uuid.uuid4()}",
        "--database-url", store.url,
    ]  # fmt: skip
    # No recovery loop here: `wfe run recover` below must find the orphan itself.
    worker = background("worker", *opts, "--recovery-interval", "0", cwd=tmp_path, env=clean_env())
    await worker.wait_for_line("Worker polling task queue")
    ticket = json.dumps(DEMO_TICKET)

    # create --wait: progress on stderr, the finished run (run show's JSON) on stdout, once a
    # lead approves the review from another shell (wfe approvals approve).
    creating = asyncio.ensure_future(wfe_process(
        "run", "create", "ticket-triage", "--input", ticket, *opts, "--json", "--wait",
        "--idempotency-key", "ticket-1042", "-a", "trigger.source=cli", "-a", "batch.size=3",
        "--actor-kind", "user", "--actor-id", "ops@acme.example",
        "--config", SEARCH_QUICKLY,
    ))  # fmt: skip
    approved_run = await approve_waiting_review(wfe, opts)
    code, stdout, stderr = await creating
    assert code == 0, stderr
    run = json.loads(stdout)
    run_id = run["id"]
    assert run_id == approved_run
    assert run["status"] == "COMPLETED"
    assert run["output"]["queue"] == "outage-oncall"
    assert [(s["stage_id"], s["attempt"]) for s in run["stages"]] == [
        ("classify", 0), ("notify", 0), ("enrich", 0), ("similar-tickets", 0),
        ("human-review", 0), ("route", 0),
    ]  # fmt: skip
    assert "similar-tickets" in stderr and "SUSPENDED" in stderr
    result = await wfe("annotations", "list", run_id, *opts, "--json", "--scope", "run")
    created_with = {
        row["key"]: (row["value"], row["actor_id"]) for row in json.loads(result.stdout)
    }
    assert created_with == {
        "trigger.source": ("cli", "ops@acme.example"),
        "batch.size": (3, "ops@acme.example"),
    }

    # The same request with its idempotency key gives the same run back, without waiting.
    result = await wfe(
        "run", "create", "ticket-triage", "--input", ticket, *opts, "--json",
        "--idempotency-key", "ticket-1042", "--config", SEARCH_QUICKLY,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"workflow_run_id": run_id, "status": "COMPLETED"}
    # The same key with another input: a conflict, one line naming the key and the run.
    result = await wfe(
        "run", "create", "ticket-triage", "--input", json.dumps({**DEMO_TICKET, "x": 1}),
        *opts, "--idempotency-key", "ticket-1042", "--config", SEARCH_QUICKLY,
    )  # fmt: skip
    assert_one_line_error(result, "'ticket-1042'", run_id, "another input")

    # A run stored without its workflow started (a lost start): `wfe run recover` starts it.
    orphan, _ = await store.create_run(
        NewRun(
            workflow_id="ticket-triage",
            workflow_name="Ticket triage",
            input=DEMO_TICKET,
            config=json.loads(SEARCH_QUICKLY),
            priority=5,
            metadata=None,
            idempotency_key=f"orphan-{uuid.uuid4()}",
        ),
        temporal_workflow_id("{run_id}"),
    )
    result = await wfe("run", "recover", *opts)
    assert result.exit_code == 0, result.stderr
    assert f"Started 1 PENDING run(s): {orphan}" in result.stdout
    assert "Restarted 0 RUNNING run(s)" in result.stdout
    result = await wfe("run", "recover", *opts, "--json")
    assert json.loads(result.stdout) == {"started": [], "restarted": []}

    # rerun --wait: the last stage runs again as attempt 1, in a new Temporal workflow.
    result = await wfe("run", "rerun", run_id, "--from-stage", "route", *opts, "--json", "--wait")
    assert result.exit_code == 0, result.stderr
    rerun = json.loads(result.stdout)
    assert rerun["status"] == "COMPLETED"
    assert rerun["temporal_workflow_id"] == f"wfe-run-{run_id}-rerun-1"
    assert {s["stage_id"]: s["attempt"] for s in rerun["stages"]}["route"] == 1
    assert_one_line_error(
        await wfe("run", "rerun", run_id, "--from-stage", "nope", *opts), "Stage nope not found"
    )

    # cancel: a finished run is left alone; a running one is cancelled.
    result = await wfe("run", "cancel", run_id, *opts)
    assert result.exit_code == 1, result.stderr  # a script can tell it was already over
    assert result.stderr.strip() == (
        f"error: run {run_id} is COMPLETED: only PENDING or RUNNING runs can be cancelled"
    )
    result = await wfe(
        "run", "create", "ticket-triage", "--input", ticket, *opts, "--json",
        "--config", '{"similar-tickets": {"poll_interval": 60}}',
    )  # fmt: skip
    second = json.loads(result.stdout)["workflow_run_id"]
    result = await wfe("run", "cancel", second, "--reason", "duplicate", *opts, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"cancelled": True, "reason": None}
    result = await wfe("run", "show", second, *opts, "--json")
    assert json.loads(result.stdout)["status"] == "CANCELLED"
    assert await approve_waiting_review(wfe, opts) == orphan  # its review waits for a lead
    for _ in range(300):  # the worker runs the recovered orphan to its end
        if (await store.get_run(orphan)).status == "COMPLETED":
            break
        await asyncio.sleep(0.1)
    result = await wfe("run", "show", orphan, *opts)
    assert "COMPLETED" in result.stdout, result.stdout
    assert "Last execution" in result.stdout and "Run age" in result.stdout
    assert_one_line_error(await wfe("run", "cancel", "no-such-run", *opts), "Run no-such-run")

    # Ctrl-C stops the worker cleanly; its relay printed the runs' events.
    code, out, err = worker.interrupt()
    assert code == 0, err
    # (The workflow code may log its own noise there; the CLI's shutdown adds no traceback.)
    assert "KeyboardInterrupt" not in err and "engine/cli" not in err, err
    assert f"run {run_id}" in out and "workflow:completed" in out
    assert "workflow:cancelled" in out
