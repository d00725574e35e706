"""``wfe serve`` (engine.cli.serve): options, the loopback rule, and a real server process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from engine.cli.serve import serve
from engine.store import SqlStore

# The command as a one-command app: how `wfe` registers it (app.command("serve")(serve)).
_app = typer.Typer()
_app.command("serve")(serve)
_app.command("unused")(lambda: None)  # two commands, so that "serve" is a subcommand

_SCRIPT = (
    "import typer; from engine.cli.serve import serve; app = typer.Typer(); "
    "app.command('serve')(serve); app.command('unused')(lambda: None); app()"
)


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WFE_")}
    env.update(overrides)
    return env


def test_help_and_the_loopback_rule() -> None:
    runner = CliRunner()
    shown = runner.invoke(_app, ["serve", "--help"], env=_env(COLUMNS="200"))
    assert shown.exit_code == 0, shown.output
    for option in (
        "--host",
        "--port",
        "--api-token",
        "--api-tokens-file",
        "--public-read",
        "--public-url",
        "--store-only",
    ):
        assert option in shown.output
    # The security model, in the help itself.
    flat = " ".join(shown.output.split())
    for phrase in (
        "WFE_API_TOKENS=alice:TOKEN:read+write+approve",
        "every route, reads included, needs one",
        "401 without, 403 without the right",
        "listens on loopback only",
        "constant time and never logged",
        "on_behalf_of",
        "TLS proxy",
    ):
        assert phrase in flat, phrase
    refused = runner.invoke(_app, ["serve", "--host", "0.0.0.0", "--store-only"], env=_env())
    assert refused.exit_code == 2
    assert refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: without an API token the server listens on 127.0.0.1 only")
    assert "WFE_API_TOKENS" in line and "--public-read" in line
    malformed = runner.invoke(
        _app, ["serve", "--store-only"], env=_env(WFE_API_TOKENS="alice:s3cr3t:read+root")
    )
    assert malformed.exit_code == 2 and malformed.stdout == ""
    (line,) = malformed.stderr.strip().splitlines()
    assert "unknown right 'root'" in line and "s3cr3t" not in line


async def test_serves_a_store_until_interrupted(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    store = SqlStore(url)
    await store.upgrade()
    await store.dispose()
    process = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, "serve", "--store-only", "--port", "0"],
        cwd=Path(__file__).resolve().parents[2],
        env=_env(WFE_DATABASE_URL=url, WFE_API_TOKEN="tok"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert line.startswith("Viewer http://127.0.0.1:"), (line, process.poll())
        access = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 10)
        assert access.startswith("Access: every route needs a token; tokens: api("), access
        assert "tok" not in access.replace("token", "")  # names principals, never a token
        base = line.split()[1].rstrip("/")
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/api/runs")).status_code == 401
            listed = await client.get("/api/runs", headers={"Authorization": "Bearer tok"})
            assert listed.status_code == 200 and listed.json() == {"items": [], "next_cursor": None}
            anonymous = await client.post("/api/runs/x/annotations", json={"attributes": {"k": 1}})
            assert anonymous.status_code == 401
            known = await client.post(
                "/api/runs/x/annotations",
                json={"attributes": {"k": 1}},
                headers={"Authorization": "Bearer tok"},
            )
            assert known.status_code == 404 and known.json()["error"] == "run_not_found"
            assert (await client.get("/", auth=("anyone", "tok"))).status_code == 200
            assert (await client.get("/healthz")).json() == {"status": "ok"}
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode == 0, (out, err)
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
