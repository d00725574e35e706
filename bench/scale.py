"""Scale (opt-in, ``make bench-scale``): 1,000 concurrent runs on one worker; 10M annotations.

Not part of ``make bench``: it takes long (tens of minutes on a 2-core machine) and loads
about 10,000,000 rows into a throwaway PostgreSQL database.

1. **Concurrent runs.** One Temporal dev server; the worker runs in a child process of its
   own (so that its resident memory is the worker's alone), the client here. ``--concurrent``
   runs (1,000) of the 10-stage no-op pipeline of :mod:`bench.overhead` are started at once
   (at most :data:`STARTS_IN_FLIGHT` start calls in flight) and waited for in start order,
   on the engine (``create_worker``, PostgreSQL side-store) and on plain temporalio (the
   same pipeline on ``UnsandboxedWorkflowRunner()``, the same default worker options),
   interleaved plain, engine, plain, ... for ``--rounds`` rounds;
   each engine phase is divided by the mean of the plain phases either side of it. Every
   phase gets a fresh worker process (warmed up with a few runs first), whose peak resident
   memory (``VmHWM``) is that phase's. Targets: throughput ratio engine/plain ≥ 0.85 (median
   of the rounds), worker RSS ≤ 300 MiB.
2. **Annotations, 1M → 10M rows.** :mod:`bench.annotations` (reads only) at each size in
   ``--sizes`` (default 1,000,000 rows over 50,000 runs, then 10,000,000 over 500,000), each
   in a fresh PostgreSQL database: bulk load time, ``list`` p50/p99, cross-run ``query`` and
   ``count_runs`` p50; printed side by side with how each grows. Targets at the largest size:
   list p99 ≤ 3 ms, query and count_runs p50 ≤ 20 ms.

Usage: ``python -m bench.scale [--postgres-url URL] [--concurrent 1000] [--rounds 3]
[--sizes 1000000:50000,10000000:500000] [--skip-runs] [--skip-annotations] [--no-write]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

if not __package__:  # run as ``python bench/scale.py``: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from temporalio.client import Client  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402

from bench import annotations  # noqa: E402
from bench.breakdown import StoreTimer, cpu_seconds, postgres_backend_pids, rss_mib  # noqa: E402
from bench.common import (  # noqa: E402
    Report,
    dev_server,
    fresh_postgres_database,
    load_average,
    machine,
    median,
    now_text,
    postgres_server_url,
)
from bench.overhead import (  # noqa: E402
    PLAIN_TEXT,
    RSS_TARGET_MIB,
    THROUGHPUT_TARGET,
    WORKER_OPTIONS,
    Ratios,
    Side,
    engine_side,
    engine_workflow,
    plain_side,
    plain_worker,
)
from engine import Kernel, create_worker  # noqa: E402
from engine.store import SqlStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS-SCALE.md"
LIST_P99_TARGET_MS = annotations.LIST_P99_TARGET_MS
QUERY_P50_TARGET_MS = annotations.QUERY_P50_TARGET_MS
WARMUP_RUNS = 5
WAIT_TIMEOUT = timedelta(minutes=30)
"""How long to wait for one run: all of them progress together, so the first one waited for
ends near the end of the phase (minutes at 1,000 runs)."""
STARTS_IN_FLIGHT = 100
"""Start calls in flight at once. All runs are in flight together, but 1,000 simultaneous
start RPCs overran the dev server's RPC timeout on a busy 2-core machine (the engine's
``RunCreate`` first writes its row, so its starts arrive in one burst)."""


# -- the worker process -------------------------------------------------------------------------


async def serve(args: argparse.Namespace) -> None:
    """Child process: run one worker until the parent closes our stdin."""
    store = None
    if args.serve == "engine":
        store = SqlStore(args.url)
        client = await Client.connect(args.address, data_converter=pydantic_data_converter)
        kernel = Kernel(
            client=client, store=store, workflows=[engine_workflow()], task_queue=args.task_queue
        )
        worker = create_worker(kernel, **WORKER_OPTIONS)
    else:
        client = await Client.connect(args.address)
        worker = plain_worker(client, args.task_queue)
    try:
        async with worker:
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        if store is not None:
            await store.dispose()


class WorkerProcess:
    """A worker in a child process (``python -m bench.scale --serve engine|plain``)."""

    def __init__(self, kind: str, address: str, task_queue: str, url: str = "") -> None:
        self.command = [
            sys.executable,
            "-m",
            "bench.scale",
            "--serve",
            kind,
            "--address",
            address,
            "--task-queue",
            task_queue,
            "--url",
            url,
        ]
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> WorkerProcess:
        root = Path(__file__).resolve().parent.parent
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=root
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout=120)
        if line.strip() != b"ready":
            raise RuntimeError(f"worker process did not start: {self.command}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), timeout=60)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


# -- 1. concurrent runs -------------------------------------------------------------------------


async def _phase(
    side: Side,
    worker: WorkerProcess,
    concurrent: int,
    server_pid: int | None,
    database: Callable[[], list[int]],
) -> dict[str, float]:
    """Warm the worker up, then ``concurrent`` runs at once, waited for in start order."""
    for _ in range(WARMUP_RUNS):
        await side.finish(await side.start())
    client_cpu, worker_cpu = time.process_time(), cpu_seconds(worker.pid)
    server_cpu = cpu_seconds(server_pid)
    database_cpu = {pid: cpu_seconds(pid) for pid in database()}
    rss_before = rss_mib(worker.pid)
    started = time.perf_counter()
    gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def start() -> object:
        async with gate:
            return await side.start()

    tokens = await asyncio.gather(*(start() for _ in range(concurrent)))
    for token in tokens:
        await side.finish(token)
    seconds = time.perf_counter() - started
    per_run = 1000 / concurrent
    # Connections the pool opened during the phase count from zero.
    database_ms = sum(cpu_seconds(p) - database_cpu.get(p, 0.0) for p in database()) * per_run
    return {
        "runs_per_s": concurrent / seconds,
        "seconds": seconds,
        "worker_peak_rss_mib": rss_mib(worker.pid, "VmHWM"),
        "worker_rss_before_mib": rss_before,
        "worker_cpu_ms": (cpu_seconds(worker.pid) - worker_cpu) * per_run,
        "client_cpu_ms": (time.process_time() - client_cpu) * per_run,
        "server_cpu_ms": (cpu_seconds(server_pid) - server_cpu) * per_run,
        "database_cpu_ms": database_ms,
    }


async def concurrent_runs(args: argparse.Namespace) -> Report:
    with fresh_postgres_database(postgres_server_url(args.postgres_url)) as url:
        store = SqlStore(url)
        await store.upgrade()
        try:
            return await _concurrent_runs(args, url, store)
        finally:
            await store.dispose()


async def _concurrent_runs(args: argparse.Namespace, url: str, store: SqlStore) -> Report:
    engine_phases: list[dict[str, float]] = []
    plain_phases: list[dict[str, float]] = []
    ratios = Ratios()
    async with dev_server() as server:
        plain_client = await Client.connect(server.address)
        engine_client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        engine_queue = f"scale-engine-{uuid.uuid4().hex[:8]}"
        plain_queue = f"scale-plain-{uuid.uuid4().hex[:8]}"
        # The client's kernel: RunCreate and wait_for_run; its worker is the child process.
        kernel = Kernel(
            client=engine_client,
            store=store,
            workflows=[engine_workflow()],
            task_queue=engine_queue,
        )
        engine = engine_side("engine", kernel, StoreTimer(store), url, WAIT_TIMEOUT)
        plain = plain_side("plain", plain_client, plain_queue)

        async def phase(kind: str) -> dict[str, float]:
            side, queue = (engine, engine_queue) if kind == "engine" else (plain, plain_queue)
            print(f"-- {args.concurrent} concurrent runs: {kind} ...", file=sys.stderr, flush=True)
            async with WorkerProcess(kind, server.address, queue, url) as worker:
                database = (lambda: postgres_backend_pids(url)) if kind == "engine" else list
                return await _phase(side, worker, args.concurrent, server.pid, database)

        before = await phase("plain")
        plain_phases.append(before)
        for _ in range(args.rounds):
            measured = await phase("engine")
            after = await phase("plain")
            engine_phases.append(measured)
            plain_phases.append(after)
            ratios.values.append(
                measured["runs_per_s"] / ((before["runs_per_s"] + after["runs_per_s"]) / 2)
            )
            before = after

    report = Report(
        f"{args.concurrent:,} concurrent runs on one worker: engine (PostgreSQL) vs plain "
        "temporalio (unsandboxed)",
        short=f"{args.concurrent:,} concurrent runs",
    )

    def med(phases: list[dict[str, float]], name: str) -> float:
        return median([p[name] for p in phases])

    report.add("plain throughput (median)", med(plain_phases, "runs_per_s"), "runs/s")
    report.add("engine throughput (median)", med(engine_phases, "runs_per_s"), "runs/s")
    report.add(
        f"throughput ratio engine/plain (median of {args.rounds} rounds)",
        ratios.median,
        "x",
        THROUGHPUT_TARGET,
        higher_is_better=True,
        note=ratios.text(),
    )
    peak = max(p["worker_peak_rss_mib"] for p in engine_phases)
    report.add(
        "engine worker process RSS, peak",
        peak,
        "MiB",
        RSS_TARGET_MIB,
        note=f"plain worker {max(p['worker_peak_rss_mib'] for p in plain_phases):.0f} MiB",
    )
    for name, label in (
        ("worker_cpu_ms", "CPU per run, worker process"),
        ("client_cpu_ms", "CPU per run, client process"),
        ("server_cpu_ms", "CPU per run, Temporal dev server"),
    ):
        report.add(
            label, med(engine_phases, name), "ms", note=f"plain {med(plain_phases, name):.0f} ms"
        )
    report.add(
        "CPU per run, PostgreSQL (backends of the side-store's database)",
        med(engine_phases, "database_cpu_ms"),
        "ms",
        note="plain: none",
    )
    report.notes.append(PLAIN_TEXT + "; worker in its own process, as the engine's")
    report.notes.append(
        "engine = create_worker(kernel) in its own process (run workflow unsandboxed, same "
        "default worker options), PostgreSQL side-store; client (RunCreate, wait_for_run) here"
    )
    engine_seconds = ", ".join(f"{p['seconds']:.0f}" for p in engine_phases)
    plain_seconds = ", ".join(f"{p['seconds']:.0f}" for p in plain_phases)
    report.notes.append(f"phases: engine {engine_seconds} s; plain {plain_seconds} s")
    return report


# -- 2. annotations from 1M to 10M rows ---------------------------------------------------------

FIGURES: tuple[tuple[str, str, str, float | None], ...] = (
    # (figure name prefix in bench.annotations, label here, unit, target at the largest size)
    ("bulk load", "bulk load (rows, indexes, VACUUM ANALYZE)", "s", None),
    ('list(run, key_prefix="decision.") p50', 'list(run, key_prefix="decision.") p50', "ms", None),
    (
        'list(run, key_prefix="decision.") p99',
        'list(run, key_prefix="decision.") p99',
        "ms",
        LIST_P99_TARGET_MS,
    ),
    ("query(", 'query(decision.outcome="low", since 7 d) p50', "ms", QUERY_P50_TARGET_MS),
    ("count_runs(", 'count_runs({decision.outcome: "low"}) p50', "ms", QUERY_P50_TARGET_MS),
)


async def annotation_growth(args: argparse.Namespace) -> list[Report]:
    sizes = []
    for item in args.sizes.split(","):
        rows, runs = (int(x) for x in item.split(":"))
        sizes.append((rows, runs))
    measured: list[Report] = []
    for rows, runs in sizes:
        options = annotations.parse_args(
            ["--rows", str(rows), "--runs", str(runs), "--skip-commits"]
            + (["--postgres-url", args.postgres_url] if args.postgres_url else [])
        )
        with fresh_postgres_database(postgres_server_url(args.postgres_url)) as url:
            report = await annotations.bench(url, options, "postgresql")
        report.print()
        measured.append(report)

    def value(report: Report, prefix: str) -> float:
        return next(f.value for f in report.figures if f.name.startswith(prefix))

    first, last = sizes[0], sizes[-1]
    growth = Report(
        f"Annotations from {first[0]:,} to {last[0]:,} rows (PostgreSQL), reads",
        short=f"annotations, {last[0]:,} rows",
    )
    for prefix, label, unit, target in FIGURES:
        values = [value(report, prefix) for report in measured]
        steps = ", ".join(
            f"{rows:,} rows: {v:.2f} {unit}" for (rows, _), v in zip(sizes, values, strict=True)
        )
        growth.add(
            f"{label} at {last[0]:,} rows",
            values[-1],
            unit,
            target,
            note=f"{steps}; ×{values[-1] / values[0]:.2f} for ×{last[0] / first[0]:.0f} rows",
        )
    return [growth]


# -- main ---------------------------------------------------------------------------------------


def write_results(
    reports: list[Report], started: str, loads: tuple[str, str], argv: list[str]
) -> None:
    lines = [
        "# Scale benchmark results",
        "",
        "Written by `python -m bench.scale` (`make bench-scale`); each run replaces this file.",
        "What each figure measures is in [README.md](README.md).",
        "",
        f"- Date: {started}",
        f"- Machine: {machine()}",
        f"- Load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]}",
        f"- Command: `{' '.join(['python -m bench.scale', *argv])}`",
        "",
    ]
    lines += [report.markdown() for report in reports]
    RESULTS.write_text("\n".join(lines))


async def main_async(args: argparse.Namespace) -> list[Report]:
    reports: list[Report] = []
    if not args.skip_runs:
        reports.append(await concurrent_runs(args))
        reports[-1].print()
    if not args.skip_annotations:
        reports += await annotation_growth(args)
        reports[-1].print()
    return reports


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--postgres-url", default=None, help="see python -m bench.overhead -h")
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sizes",
        default="1000000:50000,10000000:500000",
        help="annotation rows:runs per step, comma-separated",
    )
    parser.add_argument("--skip-runs", action="store_true")
    parser.add_argument("--skip-annotations", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS-SCALE.md alone")
    # A worker process (internal): python -m bench.scale --serve engine|plain ...
    parser.add_argument("--serve", choices=("engine", "plain"), help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Report]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.serve:
        asyncio.run(serve(args))
        return []
    started, load_at_start = now_text(), load_average()
    print(f"== python -m bench.scale, {started}\n   {machine()}\n   load average {load_at_start}")
    reports = asyncio.run(main_async(args))
    if not args.no_write and reports:
        write_results(reports, started, (load_at_start, load_average()), argv)
        print(f"\nwrote {RESULTS}")
    worst = [f for r in reports for f in r.figures if f.ratio_to_target is not None]
    if worst:
        figure = max(worst, key=lambda f: f.ratio_to_target or 0.0)
        print(f"worst ratio to target: {figure.ratio_to_target:.2f} ({figure.name})")
    return reports


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
