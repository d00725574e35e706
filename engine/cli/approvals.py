"""``wfe approvals list|approve|reject``: the approvals inbox from the command line.

The approver is the caller, never an argument: ``WFE_PRINCIPAL`` when set (e.g. by a wrapper
that authenticated the user), else the operating-system user. One function, so the API's
principals (the security work) can replace it.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from engine.cli.connection import open_kernel, open_store
from engine.cli.errors import fail
from engine.cli.options import CommonOptions, execute, with_common
from engine.cli.parsing import parse_json
from engine.cli.render import emit_json, format_value, table
from engine.core.annotations import Actor, AnnotationLimits
from engine.core.presentation import format_time
from engine.runtime.kernel_approvals import KernelApprovals, PendingApproval

__all__ = ["app", "cli_principal", "parse_duration"]

app = typer.Typer(help="List the approvals waiting for a decision; approve or reject them.")

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, what: str) -> timedelta:
    """``90s``, ``15m``, ``1h30m``, ``2d``: a duration, or a CLI error naming ``what``."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        fail(f"{what} must be a duration such as 90s, 15m, 1h30m or 2d, got {text!r}")
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_UNITS[unit]: float(number)})
    return total


def cli_principal() -> Actor:
    """Who runs this command: ``WFE_PRINCIPAL`` (``kind:id`` or ``id``), else the OS user."""
    raw = os.environ.get("WFE_PRINCIPAL", "").strip()
    if raw:
        kind, _, ident = raw.rpartition(":") if ":" in raw else ("", "", raw)
        return Actor(kind=kind or "user", id=ident)
    return Actor(kind="user", id=getpass.getuser())


def _age(since: datetime) -> str:
    seconds = int((datetime.now(UTC) - since).total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 86400}d{(seconds % 86400) // 3600:02d}h"


def _context(item: PendingApproval) -> str:
    shown = [f"{key}={format_value(value, width=40)}" for key, value in item.context.items()]
    return ", ".join(shown) or "-"


def _inbox_table(items: list[PendingApproval]) -> str:
    if not items:
        return "(no approvals waiting)"
    rows = [
        [
            _age(item.waiting_since),
            format_time(item.waiting_since),
            item.workflow_id,
            item.workflow_run_id,
            item.stage_id,
            item.requested_from or "(anyone)",
            _context(item),
        ]
        for item in items
    ]
    headers = ["AGE", "WAITING SINCE", "WORKFLOW", "RUN", "STAGE", "REQUESTED FROM", "CONTEXT"]
    return table(headers, rows)


async def _list(
    options: CommonOptions, filters: dict[str, Any], limit: int, cursor: str | None
) -> None:
    async with open_store(options) as store:
        approvals = KernelApprovals(store, AnnotationLimits(), {}, None)
        page = await approvals.pending(limit=limit, cursor=cursor, **filters)
    if options.json:
        emit_json(page.items)  # a list prints as an array, as every --json list does
        if page.next_cursor:
            typer.echo(f"More: --cursor {page.next_cursor}", err=True)
        return
    options.echo(_inbox_table(page.items))
    if page.next_cursor:
        options.echo(f"\nMore: --cursor {page.next_cursor}")


@app.command("list")
@with_common
def list_(
    options: CommonOptions,
    workflow: Annotated[
        str | None, typer.Option("--workflow", help="Only runs of this workflow id.")
    ] = None,
    requested_from: Annotated[
        str | None, typer.Option("--requested-from", help="Only stages asking this person/team.")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="Only approvals waiting at least this long (1h, 2d)."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Page size.")] = 100,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Next page (printed under the table).")
    ] = None,
) -> None:
    """List the approval stages waiting for a decision, oldest first (side-store only)."""
    filters: dict[str, Any] = {"workflow_id": workflow, "requested_from": requested_from}
    if older_than is not None:
        filters["waiting_longer_than"] = parse_duration(older_than, "--older-than")
    execute(_list(options, filters, limit, cursor))


async def _decide(
    options: CommonOptions,
    run_id: str,
    stage_id: str,
    approved: bool,
    comment: str | None,
    output: dict[str, Any] | None,
) -> None:
    actor = cli_principal()
    async with open_kernel(options) as kernel:
        record = await kernel.approvals.decide(
            run_id, stage_id, approved=approved, actor=actor, comment=comment, output=output
        )
    if options.json:
        emit_json(record)
        return
    verb = "Approved" if approved else "Rejected"
    options.echo(
        f"{verb} stage {stage_id} of run {run_id} as {actor.kind} {actor.id}: "
        f"the stage is {record.status.value}"
    )


@app.command("approve")
@with_common
def approve(
    options: CommonOptions,
    run_id: Annotated[str, typer.Argument(help="The run id.", show_default=False)],
    stage_id: Annotated[str, typer.Argument(help="The approval stage.", show_default=False)],
    comment: Annotated[str | None, typer.Option("--comment", help="Why.")] = None,
    output: Annotated[
        str | None, typer.Option("--output", help="The stage output as a JSON object.")
    ] = None,
) -> None:
    """Approve a waiting approval stage as yourself (WFE_PRINCIPAL, else your OS user)."""
    parsed = parse_json(output, "--output") if output is not None else None
    if parsed is not None and not isinstance(parsed, dict):
        fail("--output must be a JSON object")
    execute(_decide(options, run_id, stage_id, True, comment, parsed))


@app.command("reject")
@with_common
def reject(
    options: CommonOptions,
    run_id: Annotated[str, typer.Argument(help="The run id.", show_default=False)],
    stage_id: Annotated[str, typer.Argument(help="The approval stage.", show_default=False)],
    comment: Annotated[
        str, typer.Option("--comment", help="Why it is rejected (required).", show_default=False)
    ],
) -> None:
    """Reject a waiting approval stage as yourself, saying why."""
    if not comment.strip():
        fail("--comment must say why the stage is rejected")
    execute(_decide(options, run_id, stage_id, False, comment, None))
