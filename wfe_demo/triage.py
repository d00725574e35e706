"""The ``wfe demo`` workflow (support-ticket triage) and the runner that shows it end to end.

The workflow is what ``wfe run create``, ``wfe worker`` and ``wfe dev`` register by default
(``--workflows wfe_demo:WORKFLOWS``)::

    group 1  classify          an "agent" classifies the ticket; annotates decision.*
    group 2  notify | enrich   in parallel: page the on-call queue, look the customer up
    group 3  similar-tickets   async batch: submits a search, suspends, polled every second
    group 4  human-review      an approval stage: waits (durably, no polling) for a support
                               lead's decision (kernel.approvals.decide, ``wfe approvals``,
                               the viewer's inbox), recorded as approval.* annotations
    group 5  route             picks the queue; annotates routing.*

:func:`run_demo` starts a Temporal dev server (with its Web UI), a SQLite side-store and a
worker in this process, runs one ticket through, has a reviewer approve it from outside while
it waits, reruns the last stage, forks the run from that stage (the original left as it was),
and hands back everything the side-store recorded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from engine.cli.render import (
    Echo,
    annotation_table,
    dump,
    format_value,
    masked_url,
    stage_table,
    table,
    temporal_ui_url,
)
from engine.commands import RunCreate, RunFork, RunForkResult, RunRerunFrom, RunRerunFromResult
from engine.conventions import Decision, Trigger
from engine.core.annotations import Actor, RunCreateAnnotation
from engine.core.presentation import format_duration
from engine.core.records import (
    TERMINAL_STATUSES,
    Annotation,
    LogRecord,
    RunRecord,
    RunStatus,
    StageRecord,
)
from engine.core.settings import DEFAULT_DATABASE_URL
from engine.core.stages import CompletionCheck, Suspend, define_async_batch_stage, define_stage
from engine.core.workflows import Workflow, define_workflow
from engine.errors import InvalidStateError
from engine.runtime.approval_stages import define_approval_stage
from engine.runtime.context import CompletionContext, StageContext
from engine.runtime.kernel import Kernel, temporal_workflow_id

__all__ = [
    "DEMO_DATABASE_URL",
    "DEMO_TICKET",
    "TRIAGE",
    "WORKFLOWS",
    "DemoResult",
    "build_triage_workflow",
    "render_demo",
    "run_demo",
    "run_triage_demo",
]


# -- models -----------------------------------------------------------------------------------


class Ticket(BaseModel):
    """A support ticket as the help desk's webhook delivers it."""

    ticket_id: str
    subject: str
    body: str
    customer: str
    customer_tier: str = "standard"


class ClassifyConfig(BaseModel):
    """Settings of the classifying agent."""

    model: str = "triage-model-v3"
    min_confidence: float = 0.6
    """Below this the agent falls back to the "question" category."""


class Triage(BaseModel):
    """What the classifier decided."""

    ticket_id: str
    category: str
    urgency: str
    confidence: float
    customer: str
    customer_tier: str


class Notification(BaseModel):
    """Who was told about the ticket."""

    channel: str
    paged: bool


class Enrichment(BaseModel):
    """What the CRM knows about the customer."""

    account_manager: str
    sla_hours: int
    open_tickets: int


class SearchConfig(BaseModel):
    """Settings of the similar-ticket search batch."""

    poll_interval: timedelta = timedelta(seconds=1)


class SimilarTickets(BaseModel):
    """Earlier tickets like this one."""

    matches: list[str]


class Routing(BaseModel):
    """Where the ticket goes."""

    queue: str
    assignee: str
    related: list[str]


# -- stages -----------------------------------------------------------------------------------

_CATEGORIES: dict[str, tuple[str, ...]] = {
    "outage": ("down", "outage", "cannot connect", "unreachable", "offline"),
    "billing": ("invoice", "refund", "charged", "payment"),
    "bug": ("error", "crash", "exception", "broken"),
}

MODEL_LATENCY = timedelta(milliseconds=150)
"""Simulated latency of the classifier's model call."""
CRM_LATENCY = timedelta(milliseconds=40)
"""Simulated latency of the CRM lookup."""

TRIAGE_AGENT = Actor(kind="agent", id="triage-agent", version="v3")
ROUTER = Actor(kind="system", id="routing-rules", version="2026.11")
REVIEWER = Actor(kind="user", id="alice@acme.example")


@define_stage(
    id="classify",
    name="Classify ticket",
    input=Ticket,
    output=Triage,
    config=ClassifyConfig,
    description="Keyword 'agent' standing in for an LLM call; records its decision.",
)
async def classify(ctx: StageContext[Ticket, ClassifyConfig]) -> Triage:
    """Pick a category and urgency, and record why."""
    ticket = ctx.input
    await asyncio.sleep(MODEL_LATENCY.total_seconds())  # stands in for the model call
    text = f"{ticket.subject} {ticket.body}".lower()
    hits = {
        category: [word for word in words if word in text]
        for category, words in _CATEGORIES.items()
    }
    ranked = sorted(hits, key=lambda category: len(hits[category]), reverse=True)
    category = ranked[0]
    confidence = min(0.97, 0.5 + 0.15 * len(hits[category]))
    fallback = confidence < ctx.config.min_confidence
    if fallback:
        category = "question"
    urgent = "urgent" in text or (category == "outage" and ticket.customer_tier == "enterprise")
    urgency = "high" if urgent else "normal"
    ctx.annotate(
        actor=Actor(kind=TRIAGE_AGENT.kind, id=TRIAGE_AGENT.id, version=ctx.config.model),
        attributes={
            Decision.outcome.key: f"{category}/{urgency}",
            Decision.confidence.key: round(confidence, 2),
            Decision.rationale.key: (
                f"matched {', '.join(hits[ranked[0]]) or 'nothing'}; "
                f"{ticket.customer_tier} customer"
            ),
            Decision.alternatives.key: [c for c in ranked[1:] if hits[c]] or ["question"],
            Decision.used_fallback.key: fallback,
        },
        payload={"model": ctx.config.model, "keyword_hits": hits},
    )
    ctx.log("INFO", f"{ticket.ticket_id}: {category}/{urgency} (confidence {confidence:.2f})")
    return Triage(
        ticket_id=ticket.ticket_id,
        category=category,
        urgency=urgency,
        confidence=round(confidence, 2),
        customer=ticket.customer,
        customer_tier=ticket.customer_tier,
    )


@define_stage(id="notify", name="Notify on-call", input=Triage, output=Notification)
async def notify(ctx: StageContext[Triage, None]) -> Notification:
    """Page the on-call engineer for urgent tickets, post to the team channel otherwise."""
    paged = ctx.input.urgency == "high"
    channel = f"#support-{ctx.input.category}"
    ctx.annotate("notify.channel", channel)
    paging = ", paged on-call" if paged else ""
    ctx.log("INFO", f"posted {ctx.input.ticket_id} to {channel}{paging}")
    return Notification(channel=channel, paged=paged)


@define_stage(id="enrich", name="Enrich from CRM", input=Triage, output=Enrichment)
async def enrich(ctx: StageContext[Triage, None]) -> Enrichment:
    """Look the customer up (a canned answer here)."""
    await asyncio.sleep(CRM_LATENCY.total_seconds())  # stands in for the CRM lookup
    sla_hours = 4 if ctx.input.customer_tier == "enterprise" else 24
    ctx.annotate("crm.sla_hours", sla_hours)
    return Enrichment(account_manager="maria@acme.example", sla_hours=sla_hours, open_tickets=2)


async def _submit_search(ctx: StageContext[None, SearchConfig]) -> Suspend:
    triage = ctx.require("classify")
    batch_id = f"search-{ctx.workflow_run_id[-8:]}"
    ctx.annotate("search.batch_id", batch_id)
    ctx.log("INFO", f"submitted similar-ticket search {batch_id} for {triage['ticket_id']}")
    return Suspend(
        state={"batch_id": batch_id, "category": triage["category"]},
        poll_interval=ctx.config.poll_interval,
        max_wait=timedelta(minutes=5),
    )


async def _check_search(state: dict[str, Any], ctx: CompletionContext[SearchConfig]) -> Any:
    # The search "finishes" between the first and the second check.
    if ctx.poll_count == 0:
        ctx.annotate("search.status", "running")
        ctx.log("INFO", f"{state['batch_id']} still running")
        return CompletionCheck(ready=False)
    matches = ["TCK-0981", "TCK-1017"]
    ctx.annotate(attributes={"search.status": "done", "search.matches": len(matches)})
    return CompletionCheck(ready=True, output=SimilarTickets(matches=matches))


similar_tickets = define_async_batch_stage(
    id="similar-tickets",
    name="Find similar tickets",
    input=None,
    output=SimilarTickets,
    config=SearchConfig,
    execute=_submit_search,
    check_completion=_check_search,
    description="Submits a search batch job, then polls it until it is done.",
)


human_review = define_approval_stage(
    "human-review",
    name="Human review",
    requested_from="support-leads",
    timeout=timedelta(hours=24),
    description="Waits for a support lead to approve the triage (the approvals inbox, "
    "`wfe approvals`, or kernel.approvals.decide); undecided after 24 h, it fails.",
)


@define_stage(id="route", name="Route to queue", input=None, output=Routing)
async def route(ctx: StageContext[None, None]) -> Routing:
    """Pick the queue from the decision and the CRM data."""
    triage = ctx.require("classify")
    enrichment = ctx.require("enrich")
    similar = ctx.optional("similar-tickets") or {"matches": []}
    queue = f"{triage['category']}-{'oncall' if triage['urgency'] == 'high' else 'tier2'}"
    ctx.annotate(
        actor=ROUTER,
        attributes={"routing.queue": queue, "routing.assignee": enrichment["account_manager"]},
    )
    return Routing(queue=queue, assignee=enrichment["account_manager"], related=similar["matches"])


def build_triage_workflow() -> Workflow:
    """The demo's ticket-triage workflow."""
    return (
        define_workflow(
            id="ticket-triage",
            name="Ticket triage",
            description="Classify, notify and enrich, find similar tickets, review, route.",
            input=Ticket,
        )
        .pipe(classify)
        .parallel([notify, enrich])
        .pipe(similar_tickets)
        .pipe(human_review)
        .pipe(route)
        .build()
    )


TRIAGE = build_triage_workflow()
WORKFLOWS: list[Workflow] = [TRIAGE]
"""What ``--workflows`` defaults to."""

DEMO_DATABASE_URL = "sqlite+aiosqlite:///.wfe/demo.db"
"""The demo's side-store by default: apart from ``wfe dev``'s ``.wfe/engine.db``, since the
demo's Temporal server (and with it the run's history) is gone when the demo ends."""

DEMO_TICKET: dict[str, Any] = {
    "ticket_id": "TCK-1042",
    "subject": "VPN down for the whole Berlin office",
    "body": "Since 09:00 nobody in Berlin can connect to the VPN; the gateway looks offline.",
    "customer": "Acme GmbH",
    "customer_tier": "enterprise",
}


# -- the runner -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoResult:
    """Everything the demo did and what the side-store recorded about it."""

    run: RunRecord
    stages: list[StageRecord]
    annotations: list[Annotation]
    logs: list[LogRecord]
    approval: list[Annotation]
    rerun: RunRerunFromResult | None
    """``None`` when the first execution did not complete (then nothing else was done)."""
    temporal_ui_urls: dict[str, str]
    """Temporal UI link of each execution: the first one and the rerun."""
    database_url: str
    elapsed_seconds: float
    cross_run: tuple[str, Any, int] | None = None
    """A provenance question asked across runs: (key, value, how many runs carry it)."""
    viewer_url: str | None = None
    """The run's page in the provenance viewer (served while the demo runs)."""
    fork: RunForkResult | None = None
    """The fork of the run from ``route`` (the demo's last step), when it got that far."""
    fork_run: RunRecord | None = None
    """The fork as it ended."""

    def to_json(self) -> dict[str, Any]:
        """The ``wfe demo --json`` document."""
        return {
            "run": dump(self.run),
            "stages": dump(self.stages),
            "annotations": dump(self.annotations),
            "logs": dump(self.logs),
            "approval": dump(self.approval),
            "rerun": dump(self.rerun) if self.rerun is not None else None,
            "fork": dump(self.fork) if self.fork is not None else None,
            "fork_run": dump(self.fork_run) if self.fork_run is not None else None,
            "temporal_ui_urls": self.temporal_ui_urls,
            "database_url": self.database_url,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "cross_run": list(self.cross_run) if self.cross_run is not None else None,
            "viewer_url": self.viewer_url,
        }


WaitFor = Callable[[Kernel, str], Awaitable[RunRecord]]


async def run_triage_demo(
    kernel: Kernel, *, ui_url: str, namespace: str, wait_for: WaitFor, echo: Echo
) -> DemoResult:
    """Walk a triage run through approval, rerun and fork; return what was recorded.

    Create a triage run, approve it while it waits, rerun its last stage, and fork the run from
    that stage.

    Args:
        kernel: A kernel whose worker runs :data:`TRIAGE`.
        ui_url: Base URL of the Temporal Web UI.
        namespace: The Temporal namespace (for the UI links).
        wait_for: Waits until a run is terminal (and shows progress).
        echo: Where progress lines go.
    """
    started = time.monotonic()
    created = await kernel.dispatch(
        RunCreate(
            workflow_id=TRIAGE.id,
            input=DEMO_TICKET,
            annotations=[
                RunCreateAnnotation(
                    actor=Actor(kind="system", id="zendesk-webhook"),
                    attributes={
                        Trigger.source.key: "webhook:zendesk",
                        Trigger.reason.key: f"new ticket {DEMO_TICKET['ticket_id']}",
                        Trigger.actor_kind.key: "customer",
                        Trigger.actor_id.key: "it-desk@acme.example",
                    },
                )
            ],
        )
    )
    run_id = created.workflow_run_id
    echo(f"Run {run_id} created (trigger.source = webhook:zendesk)")
    review = asyncio.create_task(_review_when_asked(kernel, run_id, echo))
    try:
        run = await wait_for(kernel, run_id)
    finally:
        approval = await review
    echo(f"Run {run.status.value} in {format_duration(run.duration_ms)}")
    if run.status != RunStatus.COMPLETED:
        return await _result(kernel, run, approval, None, ui_url, namespace, started)

    rerun = await kernel.dispatch(RunRerunFrom(workflow_run_id=run_id, from_stage_id="route"))
    echo(f"Rerun from stage route (replaces: {', '.join(rerun.deleted_stages)})")
    run = await wait_for(kernel, run_id)
    echo(f"Rerun {run.status.value}")

    # A fork starts a new run at `route`, reusing every earlier stage's output, and leaves
    # this run (its records, annotations and Temporal history) exactly as it is.
    fork = await kernel.dispatch(
        RunFork(
            workflow_run_id=run_id,
            from_stage_id="route",
            reason="route again with the current rules, keeping the original run",
        )
    )
    echo(f"Forked run {run_id} from stage route: new run {fork.workflow_run_id}")
    forked = await wait_for(kernel, fork.workflow_run_id)
    echo(f"Fork {forked.status.value}")
    result = await _result(kernel, run, approval, rerun, ui_url, namespace, started)
    return dataclasses.replace(result, fork=fork, fork_run=forked)


async def _review_when_asked(kernel: Kernel, run_id: str, echo: Echo) -> list[Annotation]:
    """Play the support lead: find the review in the approvals inbox and approve it.

    ``kernel.approvals.decide`` sends the decision as a Temporal Update that ends the stage's
    wait at once; its ``approval.*`` annotations, attributed to the reviewer, are committed
    with the stage's outcome.
    """
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        waiting = await kernel.approvals.pending(
            workflow_id=TRIAGE.id, requested_from="support-leads"
        )
        if any(item.workflow_run_id == run_id for item in waiting.items):
            break
        if (await kernel.get_run(run_id)).status in TERMINAL_STATUSES:
            return []
        await asyncio.sleep(0.1)
    else:
        return []
    echo(f"Review waits for support-leads (wfe approvals list); {REVIEWER.id} approves it")
    await asyncio.sleep(0.3)  # the reviewer reads the ticket
    try:
        await kernel.approvals.decide(
            run_id,
            human_review.id,
            approved=True,
            actor=REVIEWER,
            comment="Berlin VPN outage: page on-call",
        )
    except InvalidStateError:  # decided meanwhile (or the run ended): nothing to add
        return []
    echo(f"Approved by {REVIEWER.kind} {REVIEWER.id} while the run waited (kernel.approvals)")
    return await kernel.annotations.list(run_id, key_prefix="approval.")


async def _result(
    kernel: Kernel,
    run: RunRecord,
    approval: list[Annotation],
    rerun: RunRerunFromResult | None,
    ui_url: str,
    namespace: str,
    started: float,
) -> DemoResult:
    stages = await kernel.list_stages(run.id)
    last_attempt = max((stage.attempt for stage in stages), default=0)
    outcome = await kernel.annotations.list(run.id, key="decision.outcome", limit=1)
    cross_run = None
    if outcome:
        # "How many runs ended up with this decision?": one indexed query over every run.
        value = outcome[0].value
        cross_run = (
            "decision.outcome",
            value,
            await kernel.annotations.count_runs("decision.outcome", value),
        )
    return DemoResult(
        cross_run=cross_run,
        run=run,
        stages=stages,
        annotations=await kernel.annotations.list(run.id),
        logs=await kernel.list_logs(run.id),
        approval=approval,
        rerun=rerun,
        temporal_ui_urls={
            ("first execution" if attempt == 0 else f"rerun {attempt}"): temporal_ui_url(
                ui_url, namespace, temporal_workflow_id(run.id, attempt)
            )
            for attempt in range(last_attempt + 1)
        },
        database_url=kernel.store.url,
        elapsed_seconds=time.monotonic() - started,
    )


def render_demo(result: DemoResult) -> str:
    """The human-readable report of a demo run."""
    run = result.run
    lines = [
        "",
        f"Run {run.id}  {run.workflow_id}  {run.status.value}",
        f"  input   {format_value(run.input, width=90)}",
        f"  output  {format_value(run.output, width=90)}",
        "",
        "Stages",
        stage_table(result.stages, indent="  "),
        "",
        "Annotation timeline (UTC)",
        annotation_table(result.annotations, indent="  "),
        "",
        "Logs",
        table(
            ["STAGE", "LEVEL", "MESSAGE"],
            [[log.stage_id or "-", log.level.value, log.message] for log in result.logs],
            indent="  ",
        ),
        "",
        "Temporal UI",
    ]
    width = max(len(label) for label in result.temporal_ui_urls)
    lines += [f"  {label.ljust(width)}  {url}" for label, url in result.temporal_ui_urls.items()]
    if result.viewer_url is not None:
        lines += ["", "Provenance viewer (while the demo runs; --keep-running keeps it up)"]
        lines += [f"  {result.viewer_url}"]
    if result.fork is not None:
        status = result.fork_run.status.value if result.fork_run is not None else "?"
        lines += [
            "",
            "Fork (RunFork; the original run is unchanged)",
            f"  {result.fork.source_run_id} --route--> {result.fork.workflow_run_id}  {status}",
            f"  wfe run show {result.fork.workflow_run_id}",
        ]
    if result.cross_run is not None:
        key, value, count = result.cross_run
        lines += [
            "",
            "Across runs (kernel.annotations.count_runs)",
            f"  runs where {key} = {format_value(value, width=40)}: {count}",
        ]
    where = masked_url(result.database_url)
    database = "" if result.database_url == DEFAULT_DATABASE_URL else f" --database-url {where}"
    lines += [
        "",
        f"The side-store keeps it all ({where}):",
        f"  wfe run show {run.id}{database}",
        f"  wfe annotations list {run.id} --key-prefix decision.{database}",
    ]
    return "\n".join(lines)


async def run_demo(
    *,
    database_url: str,
    namespace: str,
    task_queue: str,
    timeout: timedelta,
    echo: Echo,
    on_result: Callable[[DemoResult], None],
    keep_running: bool = False,
) -> DemoResult:
    """Run the whole demo in this process and shut everything down again.

    Args:
        database_url: Side-store URL (upgraded to the current schema first).
        namespace: Temporal namespace of the dev server.
        task_queue: Task queue of the in-process worker.
        timeout: How long each run may take.
        echo: Where progress lines go.
        on_result: Called with the result while the server is still up.
        keep_running: Keep the server and worker up until Ctrl-C after ``on_result``.
    """
    # Imported here: the CLI package imports this module lazily, and this keeps it that way.
    from engine.cli.progress import wait_with_progress
    from engine.cli.stack import local_stack, wait_for_shutdown

    seen: dict[str, tuple[str, int]] = {}  # shared: the rerun's wait shows only what changed

    async def wait_for(kernel: Kernel, run_id: str) -> RunRecord:
        return await wait_with_progress(kernel, run_id, timeout=timeout, echo=echo, seen=seen)

    async with local_stack(
        database_url=database_url,
        namespace=namespace,
        task_queue=task_queue,
        workflows=WORKFLOWS,
        echo=echo,
    ) as stack:
        from engine.core.settings import Settings
        from engine.web import create_app, start_server

        settings = Settings(temporal_ui_url=stack.server.ui_url, namespace=namespace)
        async with start_server(create_app(stack.kernel, settings)) as viewer:
            stack.kernel.viewer_url = viewer.url  # Temporal's run details link back here
            echo(f"Viewer at {viewer.url} while the demo runs (--keep-running keeps it up)")
            result = await run_triage_demo(
                stack.kernel,
                ui_url=stack.server.ui_url,
                namespace=namespace,
                wait_for=wait_for,
                echo=echo,
            )
            result = dataclasses.replace(result, viewer_url=f"{viewer.url}/runs/{result.run.id}")
            on_result(result)
            if keep_running:
                echo(
                    f"Temporal UI at {stack.server.ui_url}, viewer at {viewer.url}; "
                    "press Ctrl-C to stop"
                )
                await wait_for_shutdown()
    return result
