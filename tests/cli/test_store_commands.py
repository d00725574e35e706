"""Commands that read or write only the side-store: no Temporal server is involved.

``run show``, ``annotations list|attach|migrate-legacy`` and ``outbox flush`` on runs made by a
real kernel, on both backends, plus the one-line errors for bad input.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest

from engine import Actor, RunCreate, RunCreateAnnotation, RunStatus
from engine.core.records import Annotation
from engine.store import SqlStore
from tests.cli.support import Wfe, assert_one_line_error
from tests.helpers import running_kernel, triage_workflow

# Nothing listens there: a command that tried to reach Temporal would fail loudly.
NO_TEMPORAL = ["--temporal-address", "127.0.0.1:1"]


async def _completed_run(env: Any, store: SqlStore, *, metadata: dict[str, Any] | None) -> str:
    async with running_kernel(env, store, triage_workflow()) as kernel:
        command = RunCreate(
            workflow_id="ticket-triage",
            input={"text": "urgent: printer on fire"},
            metadata=metadata,
            annotations=[
                RunCreateAnnotation(
                    actor=Actor(kind="system", id="zendesk"),
                    attributes={"trigger.source": "webhook:zendesk"},
                )
            ],
        )
        if metadata is None:
            created = await kernel.dispatch(command)
        else:
            with pytest.warns(DeprecationWarning):
                created = await kernel.dispatch(command)
        run = await kernel.wait_for_run(created.workflow_run_id, timeout=timedelta(seconds=30))
        assert run.status == RunStatus.COMPLETED
        return run.id


async def test_show_list_attach_migrate_flush(wfe: Wfe, env: Any, store: SqlStore) -> None:
    run_id = await _completed_run(env, store, metadata={"ticket": "T-7"})
    opts = ["--database-url", store.url, *NO_TEMPORAL]

    # run show --json: the run's fields, its stages, its Temporal workflow id.
    result = await wfe("run", "show", run_id, *opts, "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["id"] == run_id
    assert shown["status"] == "COMPLETED"
    assert shown["temporal_workflow_id"] == f"wfe-run-{run_id}"
    assert [s["stage_id"] for s in shown["stages"]] == ["classify", "notify", "enrich", "route"]
    assert {s["status"] for s in shown["stages"]} == {"COMPLETED"}

    # The table form names the stages and links the Temporal UI.
    result = await wfe("run", "show", run_id, *opts)
    assert result.exit_code == 0, result.stderr
    assert "COMPLETED" in result.stdout and "enrich" in result.stdout
    assert f"/namespaces/default/workflows/wfe-run-{run_id}" in result.stdout

    # annotations list --json: an array of objects with the Annotation field names.
    result = await wfe("annotations", "list", run_id, *opts, "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)
    assert all(set(row) == set(Annotation.model_fields) for row in rows)
    keys = [row["key"] for row in rows]
    legacy = rows[keys.index("legacy.metadata.ticket")]  # synthesized from the metadata
    assert legacy["id"] == f"synthesized:{run_id}:ticket"
    assert {"trigger.source", "decision.outcome", "decision.rationale"} <= set(keys)

    result = await wfe("annotations", "list", run_id, *opts, "--json", "--key-prefix", "decision.")
    decisions = json.loads(result.stdout)
    assert decisions and all(row["key"].startswith("decision.") for row in decisions)
    assert {row["scope_id"] for row in decisions} == {"classify"}

    result = await wfe(
        "annotations", "list", run_id, *opts, "--json",
        "--scope", "stage", "--actor-kind", "agent", "--actor-id", "triage-agent", "--attempt", "0",
    )  # fmt: skip
    assert sorted(row["key"] for row in json.loads(result.stdout)) == [
        "decision.rationale",
        "decision.used_fallback",
    ]
    result = await wfe("annotations", "list", run_id, *opts, "--json", "--limit", "1")
    assert len(json.loads(result.stdout)) == 1
    result = await wfe(
        "annotations", "list", run_id, *opts, "--json", "--since", "2999-01-01T00:00:00Z"
    )
    assert json.loads(result.stdout) == []

    result = await wfe("annotations", "list", run_id, *opts)  # the table form
    assert result.exit_code == 0, result.stderr
    assert "trigger.source" in result.stdout and "system:zendesk" in result.stdout
    # Each time with its date and zone, as stored (ISO 8601, UTC).
    stamps = re.findall(r"^(\S+)\s", result.stdout, flags=re.MULTILINE)[1:]
    assert stamps and all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp) for stamp in stamps
    ), result.stdout

    # Links to the Temporal UI follow --temporal-address (its port + 1000).
    result = await wfe("run", "show", run_id, *opts, "--temporal-address", "localhost:7300")
    assert f"http://localhost:8300/namespaces/default/workflows/wfe-run-{run_id}" in result.stdout

    # attach: JSON-parsed values, the actor, and deduplication by idempotency key.
    attach = [
        "annotations", "attach", run_id, "review.disposition=approved", "review.score=0.9",
        "review.tags=[\"a\", \"b\"]", *opts,
        "--actor-kind", "user", "--actor-id", "alice@acme.com", "--idempotency-key", "review-1",
    ]  # fmt: skip
    result = await wfe(*attach, "--json")
    assert result.exit_code == 0, result.stderr
    attached = json.loads(result.stdout)
    assert {row["key"]: row["value"] for row in attached} == {
        "review.disposition": "approved",
        "review.score": 0.9,
        "review.tags": ["a", "b"],
    }
    assert {(row["actor_kind"], row["actor_id"], row["scope"]) for row in attached} == {
        ("user", "alice@acme.com", "run")
    }
    repeat = await wfe(*attach, "--json")
    assert repeat.exit_code == 0, repeat.stderr
    assert json.loads(repeat.stdout) == []
    result = await wfe("annotations", "list", run_id, *opts, "--json", "--key-prefix", "review.")
    assert len(json.loads(result.stdout)) == 3

    # migrate-legacy turns the synthesized metadata rows into stored ones, once.
    result = await wfe("annotations", "migrate-legacy", *opts, "--batch-size", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"migrated": 1}
    assert "Copying legacy run metadata" in result.stderr
    result = await wfe(
        "annotations", "list", run_id, *opts, "--json", "--key", "legacy.metadata.ticket"
    )
    (legacy,) = json.loads(result.stdout)
    assert legacy["value"] == "T-7" and not legacy["id"].startswith("synthesized:")
    result = await wfe("annotations", "migrate-legacy", *opts)
    assert result.exit_code == 0, result.stderr
    assert "Migrated 0 run(s)" in result.stdout

    # outbox flush publishes the run's events once.
    result = await wfe("outbox", "flush", *opts, "--json", "--max-events", "1000")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["published"] >= 10
    result = await wfe("outbox", "flush", *opts, "--json")
    assert json.loads(result.stdout) == {"published": 0}


async def test_bad_input_is_one_line_exit_2(wfe: Wfe, env: Any, store: SqlStore) -> None:
    run_id = await _completed_run(env, store, metadata=None)
    opts = ["--database-url", store.url, *NO_TEMPORAL]
    before = await store.list_outbox_events(run_id)

    for command in (["run", "show"], ["annotations", "list"]):
        assert_one_line_error(
            await wfe(*command, "no-such-run", *opts), "Run no-such-run not found"
        )
    assert_one_line_error(
        await wfe("annotations", "attach", "no-such-run", "a=1", *opts), "Run no-such-run not found"
    )
    assert_one_line_error(
        await wfe("annotations", "attach", run_id, "no-equals-sign", *opts), "key=value"
    )
    assert_one_line_error(
        await wfe("annotations", "attach", run_id, "a=1", "--actor-kind", "user", *opts),
        "--actor-kind and --actor-id",
    )
    assert_one_line_error(
        await wfe("annotations", "attach", run_id, "a=1", "--payload", "{oops", *opts),
        "--payload is not valid JSON",
    )
    assert_one_line_error(  # AnnotationError from the engine
        await wfe("annotations", "attach", run_id, f"{'k' * 300}=1", *opts), "300 characters"
    )
    assert_one_line_error(
        await wfe("annotations", "list", run_id, "--until", "last tuesday", *opts), "--until"
    )
    assert_one_line_error(  # pydantic ValidationError of the OutboxFlush command
        await wfe("outbox", "flush", "--max-events", "0", *opts), "max_events"
    )
    usage = await wfe("annotations", "migrate-legacy", "--batch-size", "0", *opts)
    assert usage.exit_code == 2
    assert_one_line_error(  # the run create input is checked before connecting to Temporal
        await wfe("run", "create", "ticket-triage", "--input", "{not json", *opts),
        "--input is not valid JSON",
    )
    assert_one_line_error(
        await wfe("run", "create", "no-such-workflow", "--input", "{}", *opts),
        "Workflow no-such-workflow not found",
    )
    assert_one_line_error(
        await wfe("run", "create", "ticket-triage", "--input", '{"subject": 1}', *opts),
        "Invalid workflow input",
    )
    assert_one_line_error(
        await wfe("run", "create", "x", "--input", "{}", "--workflows", "nowhere:X", *opts),
        "cannot import workflows module 'nowhere'",
    )
    assert_one_line_error(
        await wfe("run", "create", "x", "--input", "{}", "--workflows", "wfe_demo", *opts),
        "module:attribute",
    )
    # Temporal is needed to cancel: the server that does not answer is named.
    assert_one_line_error(
        await wfe("run", "cancel", run_id, *opts), "cannot reach Temporal server at 127.0.0.1:1"
    )
    # Nothing was written by any of the above.
    assert await store.list_outbox_events(run_id) == before
    result = await wfe("annotations", "list", run_id, *opts, "--json", "--key-prefix", "a")
    assert json.loads(result.stdout) == []
