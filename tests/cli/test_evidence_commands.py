"""``wfe verify`` exits 0 or 1 naming the record; ``wfe export`` writes a bundle that
``wfe verify --bundle`` checks offline (no database, no server), on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import text

from engine.store import SqlStore
from tests.cli.support import Wfe
from tests.helpers import running_kernel, triage_workflow
from tests.integration.test_record_chain import triage_run


async def test_wfe_verify_export_and_bundle(
    wfe: Wfe, env: Any, store: SqlStore, tmp_path: Path
) -> None:
    async with running_kernel(env, store, triage_workflow()) as kernel:
        run_id = await triage_run(kernel)
        address = env.client.service_client.config.target_host
        opts = ["--database-url", store.url, "--temporal-address", address]

        result = await wfe("verify", run_id, *opts)
        assert result.exit_code == 0, result.stderr
        assert "intact" in result.stdout and "records) checked" in result.stdout

        result = await wfe("keys", "new", "--out", str(tmp_path / "k"))
        assert result.exit_code == 0, result.stderr
        key, public = tmp_path / "k", tmp_path / "k.pub"
        bundle = tmp_path / "bundle.json"
        result = await wfe("export", run_id, "--out", str(bundle), "--sign-key", str(key), *opts)
        assert result.exit_code == 0, result.stderr
        exported = json.loads(bundle.read_text())
        assert exported["temporal_histories"][0]["workflow_id"] == f"wfe-run-{run_id}"
        assert len(exported["temporal_histories"][0]["sha256"]) == 64

    # Offline: no database, no server.
    result = await wfe("verify", "--bundle", str(bundle), "--public-key", str(public))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "valid for the given key" in result.stdout

    other = tmp_path / "other"
    assert (await wfe("keys", "new", "--out", str(other))).exit_code == 0
    result = await wfe("verify", "--bundle", str(bundle), "--public-key", f"{other}.pub")
    assert result.exit_code == 1
    assert "signature does not match" in result.stdout

    raw = bundle.read_bytes()
    at = raw.rindex(b'"urgent: printer on fire"') + 2  # in the chain's records
    changed = tmp_path / "changed.json"
    changed.write_bytes(raw[:at] + b"U" + raw[at + 1 :])  # one byte
    result = await wfe("verify", "--bundle", str(changed), "--public-key", str(public))
    assert result.exit_code == 1
    result = await wfe("verify", "--bundle", str(changed), "--json")  # the chain alone
    assert result.exit_code == 1
    assert json.loads(result.stdout)["first_bad"]["kind"] in ("run", "stage")

    # A change in the database after the fact: exit 1, naming the record.
    async with store.engine.begin() as connection:
        await connection.execute(
            text("UPDATE workflow_annotations SET value_text = 'forged' WHERE key = :key"),
            {"key": "trigger.source"},
        )
    result = await wfe("verify", run_id, "--database-url", store.url, "--json")
    assert result.exit_code == 1
    bad = json.loads(result.stdout)["first_bad"]
    assert (bad["kind"], bad["label"]) == ("annotation", "trigger.source")
    result = await wfe("verify", run_id, "--database-url", store.url)
    assert result.exit_code == 1 and "'trigger.source'" in result.stdout
