"""``wfe verify``, ``wfe export`` and ``wfe keys new``: prove a run's record was not changed.

``wfe verify RUN_ID`` recomputes the run's record chain from the side-store (no Temporal
server needed); ``wfe verify --bundle FILE`` checks an exported bundle with nothing else.
Exit 0: intact; exit 1: not, naming the first record that does not match.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.connection import open_kernel, open_store
from engine.cli.errors import fail
from engine.cli.options import CommonOptions, execute, with_common
from engine.core.evidence import ChainVerification
from engine.runtime.evidence_bundle import new_key_pair, sign_bundle, verify_bundle

__all__ = ["export", "keys_app", "verify"]

EXIT_NOT_INTACT = 1

keys_app = typer.Typer(help="Ed25519 key pairs for signing evidence bundles.", no_args_is_help=True)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}")


def _report(options: CommonOptions, found: ChainVerification, extra: list[str]) -> None:
    if found.ok and not extra:
        options.echo(
            f"intact: run {found.workflow_run_id}, {found.links_checked} links "
            f"({found.records_checked} records) checked, head {found.head}"
        )
        return
    if found.first_bad is not None:
        options.echo(f"NOT intact: run {found.workflow_run_id}: {found.first_bad.describe()}")
        if found.first_bad.holds is not None:
            options.echo(f"  it holds: {json.dumps(found.first_bad.holds, ensure_ascii=False)}")
    for line in extra:
        options.echo(f"NOT intact: {line}")


async def _verify_run(options: CommonOptions, run_id: str) -> ChainVerification:
    async with open_store(options) as store:
        return await store.verify_chain(run_id)


@with_common
def verify(
    options: CommonOptions,
    run_id: Annotated[
        str | None, typer.Argument(help="The run id (workflow_run_id).", show_default=False)
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option("--bundle", help="Check this evidence bundle offline instead of a run."),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="PEM Ed25519 public key the bundle must be signed by."),
    ] = None,
) -> None:
    """Check a run's tamper-evident record chain (exit 0 intact, 1 not)."""
    if (run_id is None) == (bundle is None):
        fail("give either a RUN_ID or --bundle FILE")
    if bundle is not None:
        key = _read(public_key, "public key") if public_key is not None else None
        checked = verify_bundle(_read(bundle, "bundle"), key)
        if options.json:
            typer.echo(json.dumps(checked.to_json(), indent=2, ensure_ascii=False))
        else:
            extra = [checked.problem] if checked.problem else []
            _report(options, checked.chain, extra)
            if checked.ok:
                options.echo(
                    "signature: "
                    + ("valid for the given key" if checked.signature_ok else "not checked")
                )
        if not checked.ok:
            raise typer.Exit(EXIT_NOT_INTACT)
        return
    assert run_id is not None
    found = execute(_verify_run(options, run_id))
    if options.json:
        typer.echo(json.dumps(found.to_json(), indent=2, ensure_ascii=False))
    else:
        _report(options, found, [])
    if not found.ok:
        raise typer.Exit(EXIT_NOT_INTACT)


async def _export(options: CommonOptions, run_id: str) -> dict[str, object]:
    async with open_kernel(options) as kernel:
        return await kernel.export_bundle(run_id)


@with_common
def export(
    options: CommonOptions,
    run_id: Annotated[str, typer.Argument(help="The run id (workflow_run_id).")],
    out: Annotated[Path, typer.Option("--out", help="Write the bundle (JSON) here.")],
    sign_key: Annotated[
        Path | None, typer.Option("--sign-key", help="PEM Ed25519 private key to sign with.")
    ] = None,
) -> None:
    """Write a run's evidence bundle: records, chain, Temporal history digests."""
    key = _read(sign_key, "signing key") if sign_key is not None else None
    bundle = execute(_export(options, run_id))
    if key is not None:
        try:
            bundle = sign_bundle(bundle, key)
        except ValueError as exc:
            fail(f"{sign_key}: {exc}")
    out.write_text(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    chain = bundle["chain"]
    assert isinstance(chain, dict)
    options.echo(
        f"wrote {out}: {len(chain['links'])} links, head {chain['head']}, "
        f"{len(bundle['temporal_histories'])} Temporal histories"  # type: ignore[arg-type]
        + (", signed" if key is not None else "")
    )


@keys_app.command("new")
def keys_new(
    out: Annotated[
        Path, typer.Option("--out", help="Private key file; the public key goes to OUT.pub.")
    ] = Path("wfe-evidence.key"),
) -> None:
    """Make an Ed25519 key pair for ``wfe export --sign-key``."""
    private, public = new_key_pair()
    public_path = out.with_name(out.name + ".pub")
    if out.exists():
        typer.echo(f"{out} exists: not overwritten", err=True)
        raise typer.Exit(2)
    out.touch(mode=0o600)
    out.write_bytes(private)
    public_path.write_bytes(public)
    typer.echo(f"private key: {out}\npublic key:  {public_path}")
