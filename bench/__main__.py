"""``python -m bench``: run every benchmark once and write ``bench/RESULTS.md``.

Runs :mod:`bench.overhead` (engine vs plain temporalio unsandboxed, with the sandboxed plain
pipeline as a reference; SQLite and PostgreSQL side-stores; 3 interleaved rounds) and
:mod:`bench.annotations` (1,000,000 annotation rows on PostgreSQL), prints their figures, and
keeps the figures and ratios of this run, with the date, the machine and its load, in
``bench/RESULTS.md``.

Usage: ``python -m bench [--postgres-url URL] [--quick] [--no-write]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from bench import annotations, overhead
from bench.common import Report, load_average, machine, now_text

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def _summary(reports: list[Report]) -> list[str]:
    rows = ["| benchmark | figure | value | target | status |", "|---|---|---:|---|---|"]
    for report in reports:
        for figure in report.figures:
            if figure.target is None:
                continue
            rows.append(
                f"| {report.short or report.title} | {figure.name} | "
                f"{figure.value:.2f} {figure.unit} | {figure.target_text()} {figure.unit} | "
                f"{figure.status()} |"
            )
    return rows


def write_results(
    reports: list[Report], *, started: str, loads: tuple[str, str], seconds: float, argv: list[str]
) -> None:
    command = " ".join(["python -m bench", *argv])
    lines = [
        "# Benchmark results",
        "",
        "Written by `python -m bench` (`make bench`); each run replaces this file. What each",
        "figure measures, and how to read it, is in [README.md](README.md).",
        "",
        f"- Date: {started}",
        f"- Machine: {machine()}",
        f"- Load average (1, 5, 15 min) at start: {loads[0]}; at end: {loads[1]}",
        f"- Command: `{command}` ({seconds / 60:.1f} min)",
        "- Sides: **plain** = plain temporalio on `UnsandboxedWorkflowRunner()` with the engine "
        "worker's options (temporalio's defaults), no side-store: every overhead target is "
        "judged against it; **plain, sandboxed** = the same on temporalio's default sandbox, a "
        "reference only; **plain + SQL** = the plain pipeline writing a run row and each stage's "
        "result in one transaction with hand-written SQL (sqlite3 / psycopg), a reference for the "
        "durable commit's floor; **engine** = `create_worker(kernel)` with a SQLite or PostgreSQL "
        "side-store. Overhead ratios are the median of interleaved rounds; each round's value "
        "and the spread are in the figure's note.",
        "",
        "## Targets",
        "",
        *_summary(reports),
        "",
        "## Figures",
        "",
    ]
    for report in reports:
        lines.append(report.markdown())
    RESULTS.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Run every benchmark; write bench/RESULTS.md.")
    parser.add_argument("--postgres-url", default=None, help="see python -m bench.overhead -h")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: fewer runs, and the annotations on a small SQLite file",
    )
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args(argv)
    common = ["--postgres-url", args.postgres_url] if args.postgres_url else []
    overhead_argv = common + (["--runs", "5", "--concurrent", "30"] if args.quick else [])
    annotation_argv = ["--sqlite"] if args.quick else common

    started, load_at_start, clock = now_text(), load_average(), time.perf_counter()
    print(f"== python -m bench, {started}\n   {machine()}\n   load average {load_at_start}")
    reports = overhead.main(overhead_argv)
    reports += annotations.main(annotation_argv)
    seconds = time.perf_counter() - clock
    if not args.no_write:
        write_results(
            reports,
            started=started,
            loads=(load_at_start, load_average()),
            seconds=seconds,
            argv=argv,
        )
        print(f"\nwrote {RESULTS}")
    worst = max(
        (f for r in reports for f in r.figures if f.ratio_to_target is not None),
        key=lambda f: f.ratio_to_target or -math.inf,
    )
    print(f"worst ratio to target overall: {worst.ratio_to_target:.2f} ({worst.name})")


if __name__ == "__main__":
    main()
