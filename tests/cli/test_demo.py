"""``wfe demo`` and ``wfe dev`` as a user runs them: subprocesses in a fresh directory."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from tests.cli.support import (
    WFE_BINARY,
    Background,
    Wfe,
    clean_env,
    free_port_pair,
    servers_on_port,
)

UI_LINK = re.compile(r"http://127\.0\.0\.1:(\d+)/namespaces/default/workflows/wfe-run-(\w+)")


async def test_demo_from_a_fresh_checkout(wfe: Wfe, tmp_path: Path) -> None:
    done = subprocess.run(
        [WFE_BINARY, "demo"],
        cwd=tmp_path,  # like a fresh checkout: no .wfe/ yet
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert "Traceback" not in done.stderr

    # The run, its stages, the annotation timeline with actors, the Temporal UI links.
    for key in (
        "trigger.source",
        "decision.outcome",
        "decision.confidence",
        "decision.rationale",
        "search.status",
        "routing.queue",
        "approval.approvers",
    ):
        assert key in out, key
    assert "agent:triage-agent@triage-model-v3" in out
    assert "Fork (RunFork; the original run is unchanged)" in out
    assert "Review waits for support-leads" in out
    assert "user:alice@acme.example" in out
    assert re.search(r"similar-tickets\s+SUSPENDED", out)  # progress while it was parked
    links = UI_LINK.findall(out)
    assert links, out
    (run_id,) = {run for _, run in links}
    assert f"wfe-run-{run_id}-rerun-1" in out

    # Nothing is left running on the server's port.
    started = re.search(r"Temporal dev server on 127\.0\.0\.1:(\d+)", out)
    assert started is not None, out
    assert servers_on_port(int(started.group(1))) == []
    assert "Stopped the Temporal dev server" in out

    # The viewer's address came while it was up, before the run.
    viewer_line = next(i for i, line in enumerate(out.splitlines()) if "Viewer at" in line)
    assert viewer_line < out.splitlines().index("Stages")
    # The demo's side-store keeps the run, apart from wfe dev's (whose Temporal server never
    # saw it): readable with no server at all, with the command the demo printed.
    assert not (tmp_path / ".wfe" / "engine.db").exists()
    assert (tmp_path / ".wfe" / "demo.db").exists()
    assert f"wfe run show {run_id} --database-url sqlite+aiosqlite:///.wfe/demo.db" in out
    database = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / '.wfe' / 'demo.db'}"]
    result = await wfe("run", "show", run_id, *database, "--json")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["status"] == "COMPLETED"
    assert {s["stage_id"]: s["attempt"] for s in run["stages"]} == {
        "classify": 0,
        "notify": 0,
        "enrich": 0,
        "similar-tickets": 0,
        "human-review": 0,
        "route": 1,
    }
    result = await wfe(
        "annotations", "list", run_id, *database, "--json", "--key-prefix", "routing."
    )
    routing = json.loads(result.stdout)
    assert sorted((row["key"], row["attempt"]) for row in routing) == [
        ("routing.assignee", 0),
        ("routing.assignee", 1),
        ("routing.queue", 0),
        ("routing.queue", 1),
    ]
    result = await wfe("annotations", "list", run_id, *database, "--json", "--actor-kind", "user")
    (approval, *_rest) = json.loads(result.stdout)
    assert approval["key"] == "approval.approvers"
    assert approval["value"] == ["alice@acme.example"]
    # Given while the run waited: stage rows of the review stage, first attempt.
    assert (approval["scope"], approval["scope_id"], approval["attempt"]) == (
        "stage",
        "human-review",
        0,
    )


README_PIPELINE = """
from pydantic import BaseModel
from engine import Actor, StageContext, define_stage, define_workflow
from engine.conventions import Decision


class Ticket(BaseModel):
    text: str


class Triage(BaseModel):
    urgency: str


@define_stage(id="classify", input=Ticket, output=Triage)
async def classify(ctx: StageContext[Ticket, None]) -> Triage:
    urgency = "high" if "down" in ctx.input.text else "low"
    ctx.annotate(Decision.outcome, urgency, actor=Actor(kind="agent", id="triage-bot"))
    return Triage(urgency=urgency)


triage = define_workflow(id="triage", name="Triage", input=Ticket).pipe(classify).build()
"""


async def test_dev_serves_until_ctrl_c(
    wfe: Wfe, tmp_path: Path, background: Callable[..., Background]
) -> None:
    # The README's fifteen lines, registered as it says.
    (tmp_path / "triage.py").write_text(README_PIPELINE)
    port = free_port_pair()
    address = f"localhost:{port}"
    env = clean_env(WFE_WORKFLOWS="triage:triage", WFE_TEMPORAL_ADDRESS=address)
    dev = background("dev", "--in-memory", cwd=tmp_path, env=env)
    await dev.wait_for_line("Ready")
    assert any(f"http://127.0.0.1:{port + 1000}" in line for line in dev.lines)
    assert len(servers_on_port(port)) == 1  # (so the check after Ctrl-C is not vacuous)
    viewer = next(line for line in dev.lines if line.startswith("Viewer"))
    viewer_url = viewer.split()[1]
    # A fixed port beside the UI's, so saved links keep working across restarts.
    assert viewer_url == f"http://127.0.0.1:{port + 1001}"
    with urllib.request.urlopen(viewer_url + "/", timeout=10) as page:  # noqa: S310
        assert page.status == 200
    # It suggests a workflow that is registered, and says how HTTP writes are turned on.
    (suggestion,) = [line for line in dev.lines if line.startswith("Try")]
    assert 'wfe run create triage --input \'{"text": "..."}\' --wait' in suggestion
    (api,) = [line for line in dev.lines if line.startswith("HTTP writes")]
    assert "writes_disabled" in api and "WFE_API_TOKEN" in api

    # The README's next command, from another terminal with the same environment.
    created = subprocess.run(
        [WFE_BINARY, "run", "create", "triage", "--input", '{"text": "VPN down"}', "--wait",
         "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    run = json.loads(created.stdout)
    assert run["status"] == "COMPLETED"

    # A run started by the CLI links to its viewer page from the Temporal UI too.
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    handle = client.get_workflow_handle(f"wfe-run-{run['id']}")
    description = await handle.describe()
    assert description.workflow_type == "triage"
    details = await description.static_details() or ""
    link = f"http://localhost:{port + 1001}/runs/{run['id']}"
    assert f"Provenance: {link}" in details, details
    with urllib.request.urlopen(link, timeout=10) as page:  # noqa: S310
        assert page.status == 200
    assert await handle.result() == {"urgency": "high"}

    code, out, err = dev.interrupt()
    assert code == 0, err
    assert "Stopped the Temporal dev server" in out
    assert "workflow:completed" in out  # the relay's final flush printed the last events
    assert servers_on_port(port) == []
    assert not (tmp_path / ".wfe" / "temporal.db").exists()  # --in-memory
