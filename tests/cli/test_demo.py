"""``wfe demo`` and ``wfe dev`` as a user runs them: subprocesses in a fresh directory."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

from engine.demo import DEMO_TICKET
from tests.cli.support import (
    WFE_BINARY,
    Background,
    Wfe,
    approve_waiting_review,
    clean_env,
    free_port_pair,
    servers_on_port,
    wfe_process,
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

    # The side-store under .wfe/ keeps the run: readable with no server at all.
    assert (tmp_path / ".wfe" / "engine.db").exists()
    database = ["--database-url", f"sqlite+aiosqlite:///{tmp_path / '.wfe' / 'engine.db'}"]
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


async def test_dev_serves_until_ctrl_c(
    wfe: Wfe, tmp_path: Path, background: Callable[..., Background]
) -> None:
    port = free_port_pair()
    address = f"localhost:{port}"
    dev = background(
        "dev", "--temporal-address", address, "--in-memory", cwd=tmp_path, env=clean_env()
    )
    await dev.wait_for_line("Ready")
    assert any(f"http://127.0.0.1:{port + 1000}" in line for line in dev.lines)
    assert len(servers_on_port(port)) == 1  # (so the check after Ctrl-C is not vacuous)
    viewer = next(line for line in dev.lines if line.startswith("Viewer"))
    viewer_url = viewer.split()[1]
    with urllib.request.urlopen(viewer_url + "/", timeout=10) as page:  # noqa: S310
        assert page.status == 200

    opts = [
        "--temporal-address", address,
        "--database-url", f"sqlite+aiosqlite:///{tmp_path / '.wfe' / 'engine.db'}",
    ]  # fmt: skip
    creating = asyncio.ensure_future(wfe_process(
        "run", "create", "ticket-triage", "--input", json.dumps(DEMO_TICKET), "--wait", *opts,
        "--config", json.dumps({"similar-tickets": {"poll_interval": 0.1}}),
    ))  # fmt: skip
    await approve_waiting_review(wfe, opts)
    code, stdout, stderr = await creating
    assert code == 0, stderr
    assert "Status          COMPLETED" in stdout

    code, out, err = dev.interrupt()
    assert code == 0, err
    assert "Stopped the Temporal dev server" in out
    assert "workflow:completed" in out  # the relay's final flush printed the last events
    assert servers_on_port(port) == []
    assert not (tmp_path / ".wfe" / "temporal.db").exists()  # --in-memory
