"""Engine overhead: a 10-stage no-op pipeline through the engine versus plain temporalio.

Everything runs against one local Temporal dev server (``history.transferProcessorMaxPollRPS=
1000``) in this process, on three kinds of side:

- **engine**: ``define_stage`` ×10 piped into a workflow, a ``Kernel`` and ``create_worker``
  (whose run workflow runs outside Temporal's sandbox), ``RunCreate`` then
  ``kernel.wait_for_run``; one such side per side-store (a SQLite temp file, a fresh
  PostgreSQL database);
- **plain**: the same pipeline as a plain temporalio workflow running 10 no-op activities, no
  side-store, on a worker with ``UnsandboxedWorkflowRunner()`` and otherwise the same worker
  options as the engine's (temporalio's defaults), the default data converter,
  ``start_workflow`` then ``handle.result()``: plain temporalio at its fastest for this work,
  the side every target is judged against;
- **plain, sandboxed** (reference only): the same plain workflow and worker with temporalio's
  default ``SandboxedWorkflowRunner``, as a user's own workflow runs unless they opt out.
- **engine, chain off** (single runs only): the engine side with its stage commits' record
  chain switched off (:mod:`bench.chain_off`), so the chain's share of the latency (issue 21:
  at most 10%) is measured in the same rounds.

The ratios are measured in ``--rounds`` rounds (3 by default), every side in every round:
single runs interleaved (the engine's runs of one side-store alternating with both plain
sides', in rotating order), and throughput phases interleaved plain, engine (SQLite), plain,
engine (PostgreSQL), plain, plain sandboxed, …, plain, each engine or sandboxed phase divided
by the mean of the plain phases either side of it. Each ratio is printed as the median over
the rounds with its spread (lowest–highest), and the targets are judged on the median, so one
lucky round cannot pass them. On this shared VM the same plain pipeline measured five times in
a row varied from 12 to 18 runs/s: a ratio against one earlier measurement mostly measures
that drift.

Printed per side-store: single-run latency and throughput (``--concurrent`` runs at once) of
each side, the engine/plain ratios (targets: latency ≤ 1.25, throughput ≥ 0.85) and the
engine/plain-sandboxed ones (reference), and where the engine's time goes: the single-run
latency taken apart from the workflow histories (start call, time to the first stage,
per-stage activity and workflow-task segments, tail, and what ``wait_for_run`` adds), the
side-store calls timed inside the worker, history events per stage, and CPU per run of this
process (client + workers) and of the Temporal server during the throughput phases. The last
line is the median latency ratio engine/plain (the worse of the side-stores).

Usage: ``python -m bench.overhead [--postgres-url URL] [--runs 20] [--concurrent 200]
[--rounds 3] [--backends sqlite,postgresql]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

if not __package__:  # run as ``python bench/overhead.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio import activity, workflow  # noqa: E402

with workflow.unsafe.imports_passed_through():
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, WorkflowHistory
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import UnsandboxedWorkflowRunner, Worker

    from bench.annotations import CHAIN_COST_TARGET_PERCENT
    from bench.breakdown import (
        Breakdown,
        StoreTimer,
        breakdown,
        cpu_seconds,
        median_breakdown,
        postgres_backend_pids,
        rss_mib,
        sample_peak_rss,
        thread_cpu,
    )
    from bench.chain_off import chain_off
    from bench.common import (
        Report,
        dev_server,
        fresh_postgres_database,
        median,
        percentile,
        postgres_server_url,
    )
    from bench.plain_sql import PLAIN_SQL_TEXT, open_sql_steps, plain_sql_worker, start_sql_run
    from engine import Kernel, RunCreate, RunStatus, create_worker, define_stage, define_workflow
    from engine.store import SqlStore

STAGES = 10
RSS_TARGET_MIB = 300.0
"""Issue 8: a worker running 200 concurrent runs stays within 300 MiB."""
WORKFLOW_ID = "bench-noop-10"
LATENCY_TARGET = 1.25
"""Issue 17: engine/plain (unsandboxed) single-run latency ≤ 1.25, median of the rounds."""
THROUGHPUT_TARGET = 0.85
"""Issue 17: engine/plain (unsandboxed) throughput ≥ 0.85, median of the rounds."""
RUN_TIMEOUT = timedelta(minutes=2)
WORKER_OPTIONS: dict[str, Any] = {}
"""Worker options given to every worker here, the engine's and the plain ones alike: none, so
all run on temporalio's defaults (``create_worker`` adds only the unsandboxed runner)."""

PLAIN = "plain"
SANDBOXED = "plain, sandboxed"
PLAIN_TEXT = (
    "plain = plain temporalio: 10 no-op activities, Worker(workflow_runner="
    "UnsandboxedWorkflowRunner()), default worker options and data converter, no side-store"
)
SANDBOXED_TEXT = (
    "plain, sandboxed (reference) = the same plain pipeline and worker on temporalio's default "
    "SandboxedWorkflowRunner"
)


# -- the plain temporalio pipeline --------------------------------------------------------------


@activity.defn(name="bench.noop")
async def noop_activity(index: int) -> dict[str, int]:
    """A no-op step: returns a tiny payload, like the engine stage does."""
    return {"stage": index}


@workflow.defn(name="bench.raw_pipeline")
class RawPipeline:
    """Ten no-op activities in sequence, nothing else; run both unsandboxed (the plain side
    the targets are judged against) and sandboxed (a reference)."""

    @workflow.run
    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = payload
        for index in range(STAGES):
            result = await workflow.execute_activity(
                noop_activity, index, start_to_close_timeout=timedelta(minutes=10)
            )
        return result


def plain_worker(client: Client, task_queue: str, *, sandboxed: bool = False) -> Worker:
    """The plain pipeline's worker: unsandboxed (like the engine's) unless ``sandboxed``."""
    options = dict(WORKER_OPTIONS)
    if not sandboxed:
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[RawPipeline],
        activities=[noop_activity],
        **options,
    )


_PER_SIDE = {"client", "task_queue", "workflows", "activities"}


def differing_options(engine: Worker, plain: Worker) -> list[str]:
    """Worker options (``Worker.config()``) in which the plain worker differs from the
    engine's, beyond what each side runs: runners and other objects are compared by type."""
    ours, theirs = engine.config(), plain.config()
    differing = []
    for key in sorted((set(ours) | set(theirs)) - _PER_SIDE):
        a, b = ours.get(key), theirs.get(key)  # type: ignore[misc]
        plain_value = isinstance(a, (type(None), bool, int, float, str, timedelta, list, dict))
        if (a != b) if plain_value else (type(a) is not type(b)):
            differing.append(f"{key}: engine {a!r}, plain {b!r}")
    return differing


# -- the engine pipeline ------------------------------------------------------------------------


async def _noop_stage(ctx: Any) -> dict[str, int]:
    return {"stage": ctx.stage_number}


def engine_workflow() -> Any:
    builder = define_workflow(id=WORKFLOW_ID, name="Bench no-op pipeline")
    for index in range(STAGES):
        builder = builder.pipe(define_stage(id=f"noop-{index}", execute=_noop_stage))
    return builder.build()


# -- sides and what they measure ----------------------------------------------------------------


@dataclass
class Phase:
    """One throughput phase: ``concurrent`` runs started at once, waited for in start order."""

    runs_per_s: float = 0.0
    seconds: float = 0.0
    cpu_ms_per_run: float = 0.0
    """This process (client and workers)."""
    server_cpu_ms_per_run: float = 0.0
    """The Temporal dev server."""
    database_cpu_ms_per_run: float = 0.0
    """The PostgreSQL server processes serving the side-store (0 on SQLite: in process)."""
    thread_cpu_ms_per_run: dict[str, float] = field(default_factory=dict)
    """This process, per group of threads (see ``bench.breakdown.THREAD_GROUPS``)."""
    peak_rss_mib: float = 0.0
    """Peak resident memory of this process (workers and client)."""
    rss_before_mib: float = 0.0


@dataclass
class Side:
    """One way to run the pipeline, and everything measured of it."""

    name: str
    start: Callable[[], Awaitable[Any]]
    """Start one run; returns a token for ``finish`` and ``history``."""
    finish: Callable[[Any], Awaitable[None]]
    """Wait until the run is done, and check that it succeeded."""
    history: Callable[[Any], Awaitable[WorkflowHistory]]
    timer: StoreTimer | None = None
    database_pids: Callable[[], list[int]] | None = None
    """The side-store's server processes (PostgreSQL), whose CPU the phases add up."""
    latencies: list[list[float]] = field(default_factory=list)
    """Per round, the timed single runs (seconds)."""
    start_latencies: list[float] = field(default_factory=list)
    """The start call alone (``RunCreate`` dispatch / ``start_workflow``), every timed run."""
    tokens: list[Any] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    details: list[Breakdown] = field(default_factory=list)

    def all_latencies(self) -> list[float]:
        return [x for each in self.latencies for x in each]

    def closed_latencies(self) -> list[float]:
        """Per single run: start call + workflow started→closed, i.e. without the client's
        completion detection (``wait_for_run`` on the engine side)."""
        pairs = zip(self.start_latencies, self.details, strict=True)
        return [start + detail.wall_ms / 1000 for start, detail in pairs]


async def single_runs(sides: list[Side], *, runs: int, warmups: int) -> None:
    """Sequential single runs of every side, interleaved in rotating order (A B C, B C A, ...),
    so that each side meets the same machine; appends one round of latencies to each side."""
    for side in sides:
        side.latencies.append([])
    for index in range(warmups + runs):
        shift = index % len(sides)
        for side in sides[shift:] + sides[:shift]:
            timed = index >= warmups
            if side.timer is not None:
                side.timer.enabled = timed
            started = time.perf_counter()
            token = await side.start()
            dispatched = time.perf_counter()
            await side.finish(token)
            if side.timer is not None:
                side.timer.enabled = False
            if timed:
                side.latencies[-1].append(time.perf_counter() - started)
                side.start_latencies.append(dispatched - started)
                side.tokens.append(token)


async def throughput(side: Side, *, concurrent: int, server_pid: int | None) -> Phase:
    """``concurrent`` runs started at once, waited for in start order."""
    phase = Phase()
    database = side.database_pids() if side.database_pids else []
    database_cpu = {pid: cpu_seconds(pid) for pid in database}
    cpu, server_cpu, threads = time.process_time(), cpu_seconds(server_pid), thread_cpu()
    phase.rss_before_mib = rss_mib()
    peak = [phase.rss_before_mib]
    sampler = asyncio.ensure_future(sample_peak_rss(peak))
    started = time.perf_counter()
    tokens = await asyncio.gather(*(side.start() for _ in range(concurrent)))
    # One waiter at a time: runs finish roughly in start order, so this adds no polling
    # load beside the worker, and at most one wait at the very end.
    for token in tokens:
        await side.finish(token)
    phase.seconds = time.perf_counter() - started
    sampler.cancel()
    phase.peak_rss_mib = peak[0]
    phase.runs_per_s = concurrent / phase.seconds
    phase.cpu_ms_per_run = (time.process_time() - cpu) * 1000 / concurrent
    phase.server_cpu_ms_per_run = (cpu_seconds(server_pid) - server_cpu) * 1000 / concurrent
    phase.thread_cpu_ms_per_run = {
        group: (seconds - threads.get(group, 0.0)) * 1000 / concurrent
        for group, seconds in thread_cpu().items()
    }
    if side.database_pids:
        # Connections opened during the phase count from zero; closed ones are lost (the pool
        # keeps them, so few are).
        used = sum(cpu_seconds(p) - database_cpu.get(p, 0.0) for p in side.database_pids())
        phase.database_cpu_ms_per_run = used * 1000 / concurrent
    side.phases.append(phase)
    return phase


def _handle_side(
    name: str,
    start: Callable[[], Awaitable[Any]],
    database_pids: Callable[[], list[int]] | None = None,
) -> Side:
    """A side whose ``start`` returns a workflow handle: done when its result is."""

    async def finish(handle: Any) -> None:
        await handle.result()

    async def history(handle: Any) -> WorkflowHistory:
        return await handle.fetch_history()

    return Side(name, start, finish, history, database_pids=database_pids)


def plain_side(name: str, client: Client, task_queue: str) -> Side:
    async def start() -> Any:
        return await client.start_workflow(
            RawPipeline.run, {"n": 1}, id=f"raw-{uuid.uuid4()}", task_queue=task_queue
        )

    return _handle_side(name, start)


async def _open_plain_sql(
    stack: contextlib.AsyncExitStack,
    backend: str,
    client: Client,
    args: argparse.Namespace,
) -> Side:
    """The plain + SQL side (:mod:`bench.plain_sql`) on a database of its own."""
    url = _side_database(stack, backend, args)
    steps = await stack.enter_async_context(open_sql_steps(url))
    queue = f"bench-plain-sql-{uuid.uuid4().hex[:8]}"
    await stack.enter_async_context(plain_sql_worker(client, queue, steps, **WORKER_OPTIONS))
    pids = None if backend == "sqlite" else (lambda: postgres_backend_pids(url))
    return _handle_side(
        f"plain + SQL ({backend})", lambda: start_sql_run(client, steps, queue), pids
    )


def engine_side(
    name: str, kernel: Kernel, timer: StoreTimer, url: str, timeout: timedelta = RUN_TIMEOUT
) -> Side:
    async def start() -> Any:
        created = await kernel.dispatch(RunCreate(workflow_id=WORKFLOW_ID, input={"n": 1}))
        return created.workflow_run_id

    async def finish(run_id: str) -> None:
        try:
            run = await kernel.wait_for_run(run_id, timeout=timeout)
        except TimeoutError as exc:
            raise RuntimeError(await _diagnose(kernel, run_id, timeout)) from exc
        if run.status != RunStatus.COMPLETED:
            raise RuntimeError(f"engine run {run_id} ended {run.status}: {run.output}")

    async def history(run_id: str) -> WorkflowHistory:
        temporal_id = await kernel.store.temporal_workflow_id(run_id)
        assert temporal_id is not None
        return await kernel.client.get_workflow_handle(temporal_id).fetch_history()

    pids = None if url.startswith("sqlite") else (lambda: postgres_backend_pids(url))
    return Side(name, start, finish, history, timer=timer, database_pids=pids)


def unchained_side(side: Side) -> Side:
    """``side`` with the record chain off for its runs (:mod:`bench.chain_off`): the
    counterfactual issue 21's budget is judged on. Single runs only, which run one at a
    time, so the swap covers exactly this side's run."""
    switches: dict[Any, contextlib.ExitStack] = {}

    async def start() -> Any:
        switch = contextlib.ExitStack()
        switch.enter_context(chain_off())
        try:
            token = await side.start()
        except BaseException:
            switch.close()
            raise
        switches[token] = switch
        return token

    async def finish(token: Any) -> None:
        try:
            await side.finish(token)
        finally:
            switches.pop(token).close()

    return Side(f"{side.name}, chain off", start, finish, side.history)


async def _diagnose(kernel: Kernel, run_id: str, timeout: timedelta) -> str:
    """What a run that did not finish in time is stuck on (stages, pending activities)."""
    lines = [f"engine run {run_id} not finished after {timeout}"]
    try:
        stages = await kernel.list_stages(run_id)
        lines.append("stages: " + ", ".join(f"{s.stage_id}={s.status}" for s in stages))
        temporal_id = await kernel.store.temporal_workflow_id(run_id)
        if temporal_id:
            handle = kernel.client.get_workflow_handle(temporal_id)
            described = await handle.describe()
            lines.append(f"temporal: {temporal_id} {described.status}")
            for pending in described.raw_description.pending_activities:
                failure = pending.last_failure.message if pending.HasField("last_failure") else ""
                lines.append(
                    f"  pending {pending.activity_type.name} attempt {pending.attempt}: {failure}"
                )
            events = list((await handle.fetch_history()).events)[-6:]
            lines += [f"  event {e.event_id} {EventType.Name(e.event_type)}" for e in events]
    except Exception as exc:  # diagnostics only
        lines.append(f"(diagnostics failed: {exc!r})")
    return "\n".join(lines)


# -- the benchmark ------------------------------------------------------------------------------


@dataclass
class Ratios:
    """One ratio per round."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.values)

    def text(self) -> str:
        if not self.values:
            return "no rounds"
        low, high = min(self.values), max(self.values)
        rounds = ", ".join(f"{v:.2f}" for v in self.values)
        return f"rounds {rounds}; spread {low:.2f}–{high:.2f} ({high - low:.2f})"


@dataclass
class EngineResult:
    """An engine side with the plain sides' single runs interleaved with its own."""

    backend: str
    engine: Side
    plain: Side
    """The plain (unsandboxed) single runs of this side-store's blocks."""
    sandboxed: Side
    unchained: Side
    """The engine side with the record chain off (single runs only)."""
    plain_sql: Side
    """Plain temporalio writing each stage's result with hand-written SQL (a reference)."""
    latency: Ratios = field(default_factory=Ratios)
    latency_vs_sandboxed: Ratios = field(default_factory=Ratios)
    latency_of_chain: Ratios = field(default_factory=Ratios)
    """Per round: the engine's latency over the same engine's with the chain off."""
    throughput: Ratios = field(default_factory=Ratios)
    throughput_vs_sandboxed: Ratios = field(default_factory=Ratios)
    latency_vs_plain_sql: Ratios = field(default_factory=Ratios)
    throughput_vs_plain_sql: Ratios = field(default_factory=Ratios)
    plain_phases: list[Phase] = field(default_factory=list)
    """The plain phases either side of each engine phase."""


def _side_database(stack: contextlib.AsyncExitStack, backend: str, args: argparse.Namespace) -> str:
    """A database of a side's own, removed when ``stack`` closes: a SQLite temp file or a fresh
    PostgreSQL database (SQLAlchemy URL)."""
    if backend == "sqlite":
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="wfe-bench-"))
        return f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
    return stack.enter_context(fresh_postgres_database(postgres_server_url(args.postgres_url)))


async def _open_engine(
    stack: contextlib.AsyncExitStack, backend: str, client: Client, args: argparse.Namespace
) -> tuple[Kernel, StoreTimer, str, Worker]:
    url = _side_database(stack, backend, args)
    store = SqlStore(url)
    stack.push_async_callback(store.dispose)
    await store.upgrade()
    timer = StoreTimer(store)
    kernel = Kernel(
        client=client,
        store=store,
        workflows=[engine_workflow()],
        task_queue=f"bench-engine-{uuid.uuid4().hex[:8]}",
    )
    worker = await stack.enter_async_context(create_worker(kernel, **WORKER_OPTIONS))
    return kernel, timer, url, worker


def _single_sides(result: EngineResult) -> list[Side]:
    return [result.engine, result.unchained, result.plain, result.sandboxed, result.plain_sql]


def _mean_phase(before: Phase, after: Phase) -> float:
    return (before.runs_per_s + after.runs_per_s) / 2


def _round_latency(side: Side, other: Side) -> float:
    return median(side.latencies[-1]) / median(other.latencies[-1])


async def main_async(args: argparse.Namespace) -> list[Report]:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    for text in (PLAIN_TEXT, SANDBOXED_TEXT, PLAIN_SQL_TEXT):
        print(f"   {text}", file=sys.stderr, flush=True)
    async with dev_server() as server, contextlib.AsyncExitStack() as stack:
        plain_client = await Client.connect(server.address)
        engine_client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        queues = {PLAIN: f"bench-plain-{uuid.uuid4().hex[:8]}"}
        queues[SANDBOXED] = f"bench-sandboxed-{uuid.uuid4().hex[:8]}"
        unsandboxed = await stack.enter_async_context(plain_worker(plain_client, queues[PLAIN]))
        await stack.enter_async_context(
            plain_worker(plain_client, queues[SANDBOXED], sandboxed=True)
        )
        sandboxed = plain_side(SANDBOXED, plain_client, queues[SANDBOXED])
        results: list[EngineResult] = []
        for backend in backends:
            kernel, timer, url, worker = await _open_engine(stack, backend, engine_client, args)
            differing = differing_options(worker, unsandboxed)
            if differing:  # the comparison would not be like for like
                raise SystemExit("plain worker options differ: " + "; ".join(differing))
            engine = engine_side(f"engine ({backend})", kernel, timer, url)
            results.append(
                EngineResult(
                    backend,
                    engine,
                    plain_side(PLAIN, plain_client, queues[PLAIN]),
                    plain_side(SANDBOXED, plain_client, queues[SANDBOXED]),
                    unchained_side(engine),
                    await _open_plain_sql(stack, backend, plain_client, args),
                )
            )
        plain_phases = plain_side(PLAIN, plain_client, queues[PLAIN])  # throughput only
        # Warm every side up (worker caches, connection pools, the sandbox's module cache).
        for result in results:
            await single_runs(_single_sides(result), runs=0, warmups=args.warmups)
            for side in _single_sides(result):
                side.latencies.clear()

        def progress(round_number: int, text: str) -> None:
            print(f"-- round {round_number + 1}/{args.rounds}: {text}", file=sys.stderr, flush=True)

        async def phase(side: Side) -> Phase:
            return await throughput(side, concurrent=args.concurrent, server_pid=server.pid)

        before = await phase(plain_phases)
        for round_number in range(args.rounds):
            # Alternate which side-store goes first, so neither always meets a warmer machine.
            ordered = results if round_number % 2 == 0 else results[::-1]
            for result in ordered:
                progress(round_number, f"single runs: engine ({result.backend}), plain sides")
                await single_runs(_single_sides(result), runs=args.runs, warmups=1)
                result.latency.values.append(_round_latency(result.engine, result.plain))
                result.latency_of_chain.values.append(
                    _round_latency(result.engine, result.unchained)
                )
                result.latency_vs_sandboxed.values.append(
                    _round_latency(result.engine, result.sandboxed)
                )
                result.latency_vs_plain_sql.values.append(
                    _round_latency(result.engine, result.plain_sql)
                )
            for result in ordered:
                progress(round_number, f"throughput: engine ({result.backend}) between plains")
                engine_phase = await phase(result.engine)
                after = await phase(plain_phases)
                ratio = engine_phase.runs_per_s / _mean_phase(before, after)
                result.throughput.values.append(ratio)
                result.plain_phases += [before, after]
                before = after
            progress(round_number, "throughput: plain sandboxed (reference) between plains")
            sandboxed_phase = await phase(sandboxed)
            after = await phase(plain_phases)
            for result in results:
                result.throughput_vs_sandboxed.values.append(
                    result.engine.phases[-1].runs_per_s / sandboxed_phase.runs_per_s
                )
            before = after
            for result in results:
                progress(round_number, f"throughput: plain + SQL ({result.backend}) (reference)")
                sql_phase = await phase(result.plain_sql)
                result.throughput_vs_plain_sql.values.append(
                    result.engine.phases[-1].runs_per_s / sql_phase.runs_per_s
                )
        for result in results:
            for side in (result.engine, result.plain, result.sandboxed):
                side.details = [breakdown(await side.history(token)) for token in side.tokens]
    reports = [_report(result, sandboxed, args) for result in results]
    for report in reports:
        report.print()
    return reports


def _ms(values: list[float]) -> float:
    return median(values) * 1000


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def _threads(phases: list[Phase]) -> str:
    """Mean CPU per run of each thread group over ``phases``, e.g. ``loop 27, store 18``."""
    groups = {
        "event loop": "loop",
        "side-store threads": "store",
        "workflow threads": "workflow",
        "Temporal core": "core",
        "other": "other",
    }
    shown = []
    for group, short in groups.items():
        value = _mean([p.thread_cpu_ms_per_run.get(group, 0.0) for p in phases])
        if value >= 0.05:
            shown.append(f"{short} {value:.1f}")
    return ", ".join(shown) + " ms"


def _report(result: EngineResult, sandboxed: Side, args: argparse.Namespace) -> Report:
    engine, plain, backend = result.engine, result.plain, result.backend
    rounds = len(result.latency.values)
    report = Report(
        f"Engine vs plain temporalio: 10-stage no-op pipeline, {backend} side-store",
        short=f"overhead, {backend}",
    )
    add = report.add
    count = f"median of {args.runs}×{rounds}"
    plain_latency, engine_latency = _ms(plain.all_latencies()), _ms(engine.all_latencies())
    add(f"plain latency ({count})", plain_latency, "ms")
    add(f"engine latency ({count})", engine_latency, "ms")
    sandboxed_latency = _ms(result.sandboxed.all_latencies())
    add(f"plain, sandboxed latency ({count}; reference)", sandboxed_latency, "ms")
    plain_tp = median([p.runs_per_s for p in result.plain_phases])
    add(f"plain throughput ({args.concurrent} concurrent, median)", plain_tp, "runs/s")
    add(
        f"engine throughput ({args.concurrent} concurrent, median)",
        median([p.runs_per_s for p in engine.phases]),
        "runs/s",
    )
    add(
        f"plain, sandboxed throughput ({args.concurrent} concurrent, median; reference)",
        median([p.runs_per_s for p in sandboxed.phases]),
        "runs/s",
    )
    add(
        f"latency ratio engine/plain (median of {rounds} rounds)",
        result.latency.median,
        "x",
        LATENCY_TARGET,
        note=result.latency.text(),
    )
    add(
        f"throughput ratio engine/plain (median of {rounds} rounds)",
        result.throughput.median,
        "x",
        THROUGHPUT_TARGET,
        higher_is_better=True,
        note=result.throughput.text(),
    )
    add(
        "record chain's cost on the run's latency (engine / engine with the chain off)",
        (result.latency_of_chain.median - 1) * 100,
        "%",
        CHAIN_COST_TARGET_PERCENT,
        note=f"issue 21; {result.latency_of_chain.text()} (as ratios); chain off "
        f"{_ms(result.unchained.all_latencies()):.0f} ms",
    )
    add(
        "latency ratio engine/plain sandboxed (reference)",
        result.latency_vs_sandboxed.median,
        "x",
        note=result.latency_vs_sandboxed.text(),
    )
    add(
        "throughput ratio engine/plain sandboxed (reference)",
        result.throughput_vs_sandboxed.median,
        "x",
        note=result.throughput_vs_sandboxed.text(),
    )
    sql = result.plain_sql
    add(
        "latency ratio engine/plain + SQL (reference: the durable commit's floor)",
        result.latency_vs_plain_sql.median,
        "x",
        note=f"{result.latency_vs_plain_sql.text()}; plain + SQL {_ms(sql.all_latencies()):.0f} ms",
    )
    sql_cpu = _mean([p.cpu_ms_per_run + p.database_cpu_ms_per_run for p in sql.phases])
    add(
        "throughput ratio engine/plain + SQL (reference: the durable commit's floor)",
        result.throughput_vs_plain_sql.median,
        "x",
        note=f"{result.throughput_vs_plain_sql.text()}; plain + SQL "
        f"{median([p.runs_per_s for p in sql.phases]):.1f} runs/s, CPU per run (process and "
        f"database) {sql_cpu:.0f} ms, dev server "
        f"{_mean([p.server_cpu_ms_per_run for p in sql.phases]):.0f} ms",
    )
    peak = max(engine.phases, key=lambda p: p.peak_rss_mib)
    add(
        f"worker process RSS, peak over {args.concurrent} concurrent runs",
        peak.peak_rss_mib,
        "MiB",
        RSS_TARGET_MIB,
        note=f"client and every worker of this benchmark in the same process; "
        f"{peak.rss_before_mib:.0f} MiB before the phase",
    )

    # Where the single-run latency goes (medians over the timed runs' histories).
    d, r = median_breakdown(engine.details), median_breakdown(plain.details)
    closed_engine, closed_plain = _ms(engine.closed_latencies()), _ms(plain.closed_latencies())
    times = engine.timer.times if engine.timer else {}
    timed_runs = max(len(engine.tokens), 1)
    add(
        "latency ratio to workflow closed (no wait_for_run)",
        closed_engine / closed_plain,
        "x",
        note=f"engine {closed_engine:.0f} ms, plain {closed_plain:.0f} ms",
    )
    add(
        "wait_for_run detection delay (latency - closed)",
        engine_latency - closed_engine,
        "ms",
        note=f"plain handle.result() {plain_latency - closed_plain:.1f} ms; "
        f"{len(times.get('get_run', [])) / timed_runs:.1f} get_run reads per run",
    )
    add(
        "start call: RunCreate dispatch",
        _ms(engine.start_latencies),
        "ms",
        note=f"plain start_workflow {_ms(plain.start_latencies):.1f} ms",
    )
    add("workflow started to closed", d.wall_ms, "ms", note=f"plain {r.wall_ms:.0f} ms")
    for label, name in (
        ("  started to first stage scheduled", "first_schedule_ms"),
        ("  per stage: activity scheduled to started", "schedule_to_start_ms"),
        ("  per stage: activity started to completed", "start_to_close_ms"),
        ("  per stage: completed to next scheduled", "close_to_next_ms"),
        ("  last stage completed to workflow closed", "tail_ms"),
    ):
        add(label, getattr(d, name), "ms", note=f"plain {getattr(r, name):.1f} ms")
    for name in ("create_run", "start_run", "begin_stage", "commit_stage", "finalize_run"):
        if times.get(name):
            add(
                f"store.{name} (median wall time)",
                median(times[name]),
                "ms",
                note=f"{len(times[name]) / timed_runs:.1f} calls per run",
            )
    if engine.timer is not None:
        add(
            "SQL statements per run (incl. wait_for_run reads)",
            engine.timer.statements / timed_runs,
            "statements",
            note=f"{engine.timer.transactions / timed_runs:.0f} committed transactions",
        )
    add(
        "history events per stage",
        d.events / STAGES,
        "events",
        note=f"plain {r.events / STAGES:.1f}; engine {d.events:.0f} per run, "
        f"{d.markers:.0f} local-activity markers",
    )
    # Where the throughput goes: CPU per run while the concurrent runs are in flight.
    add(
        "CPU per run, this process (client + worker)",
        _mean([p.cpu_ms_per_run for p in engine.phases]),
        "ms",
        note=f"plain {_mean([p.cpu_ms_per_run for p in result.plain_phases]):.0f} ms, "
        f"sandboxed {_mean([p.cpu_ms_per_run for p in sandboxed.phases]):.0f} ms",
    )
    add(
        "  of which side-store threads (by thread in the note)",
        _mean([p.thread_cpu_ms_per_run.get("side-store threads", 0.0) for p in engine.phases]),
        "ms",
        note=f"engine {_threads(engine.phases)}; plain {_threads(result.plain_phases)}",
    )
    add(
        "CPU per run, Temporal dev server",
        _mean([p.server_cpu_ms_per_run for p in engine.phases]),
        "ms",
        note=f"plain {_mean([p.server_cpu_ms_per_run for p in result.plain_phases]):.0f} ms, "
        f"sandboxed {_mean([p.server_cpu_ms_per_run for p in sandboxed.phases]):.0f} ms",
    )
    if backend == "postgresql":
        add(
            "CPU per run, PostgreSQL (backends of the side-store's database)",
            _mean([p.database_cpu_ms_per_run for p in engine.phases]),
            "ms",
            note="plain: none",
        )
    report.notes.append(PLAIN_TEXT)
    report.notes.append(SANDBOXED_TEXT)
    report.notes.append(PLAIN_SQL_TEXT)
    report.notes.append(
        f"engine = create_worker(kernel) (run workflow unsandboxed, same default worker "
        f"options), pydantic data converter, {backend} side-store, RunCreate + wait_for_run"
    )
    report.notes.append(
        f"throughput phases: {args.concurrent} runs in "
        f"{', '.join(f'{p.seconds:.1f}' for p in engine.phases)} s (engine), "
        f"{', '.join(f'{p.seconds:.1f}' for p in result.plain_phases)} s (plain, the phases "
        f"either side); latency p90 engine {percentile(engine.all_latencies(), 90) * 1000:.0f} "
        f"ms, plain {percentile(plain.all_latencies(), 90) * 1000:.0f} ms"
    )
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=None,
        help="PostgreSQL server URL (default: $WFE_BENCH_POSTGRES_URL or the local server); "
        "a fresh database is created next to its 'postgres' database and dropped after",
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument(
        "--runs", type=int, default=20, help="timed single runs per side and round (median)"
    )
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=200, help="runs per throughput phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds; each ratio is the median over them"
    )
    return parser.parse_args(argv)


def last_line(reports: list[Report]) -> str:
    ratios = {
        r.title.rsplit(", ", 1)[-1].split()[0]: f.value
        for r in reports
        for f in r.figures
        if f.name.startswith("latency ratio engine/plain (median")
    }
    names = ", ".join(ratios)
    worst = max(ratios.values())
    return f"latency ratio engine/plain, median of rounds (worst of {names}): {worst:.2f}"


def main(argv: list[str] | None = None) -> list[Report]:
    reports = asyncio.run(main_async(parse_args(argv)))
    print()
    print(last_line(reports))
    return reports


if __name__ == "__main__":
    # Re-enter through the package so that the workflow class lives in ``bench.overhead``:
    # the sandbox re-imports a workflow's module by name, which ``__main__`` cannot be.
    from bench.overhead import main as package_main

    package_main()
