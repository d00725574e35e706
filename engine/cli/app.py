"""The ``wfe`` Typer application: command groups and the entry point."""

from __future__ import annotations

import typer

from engine.cli import db, dev, evidence, runs, serve
from engine.cli.annotations import app as annotations_app
from engine.cli.approvals import app as approvals_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="wfe",
    help="Durable stage pipelines on Temporal, with provenance in a SQL side-store.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("demo")(dev.demo)
app.command("dev")(dev.dev)
app.command("worker")(dev.worker)
app.command("serve")(serve.serve)
app.add_typer(runs.app, name="run")
app.add_typer(annotations_app, name="annotations")
app.add_typer(approvals_app, name="approvals")
app.add_typer(db.outbox_app, name="outbox")
app.add_typer(db.db_app, name="db")
app.command("verify")(evidence.verify)
app.command("export")(evidence.export)
app.add_typer(evidence.keys_app, name="keys")


def main() -> None:
    """Console-script entry point (``wfe``)."""
    app()
