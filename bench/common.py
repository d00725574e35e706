"""Helpers shared by the benchmarks: dev server, throwaway databases, timing and reports."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import make_url

# ``python bench/overhead.py`` puts bench/ on sys.path, not the project root.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.cli.devserver import DevServer  # noqa: E402

__all__ = [
    "DEFAULT_POSTGRES_SERVER",
    "Figure",
    "Report",
    "dev_server",
    "fresh_postgres_database",
    "load_average",
    "machine",
    "median",
    "now_text",
    "percentile",
    "postgres_server_url",
    "stopwatch",
]

DEFAULT_POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_server_url(cli_value: str | None) -> str:
    """The PostgreSQL URL to use: ``--postgres-url``, else ``WFE_BENCH_POSTGRES_URL``, else local.

    A URL naming the ``postgres`` maintenance database (the default) means "create a fresh
    database next to it"; any other database name is used as given.
    """
    return cli_value or os.environ.get("WFE_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_SERVER


def _admin(server_url: str, sql: str) -> None:
    import psycopg

    url = make_url(server_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@contextmanager
def fresh_postgres_database(server_url: str, prefix: str = "wfe_bench") -> Iterator[str]:
    """A brand-new database, dropped on exit; yields its SQLAlchemy URL.

    When ``server_url`` names a database other than ``postgres``, that database is used as is
    (nothing is created or dropped).
    """
    url = make_url(server_url)
    if url.database not in (None, "", "postgres"):
        yield server_url
        return
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        for attempt in range(5):  # the server may be busy or briefly refusing connections
            try:
                _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except Exception as exc:
                if attempt == 4:
                    print(f"could not drop database {name}: {exc}", file=sys.stderr)
                time.sleep(1 + attempt)


@asynccontextmanager
async def dev_server() -> AsyncIterator[DevServer]:
    """A headless local Temporal dev server (in memory, ``transferProcessorMaxPollRPS=1000``)."""
    server = DevServer(ui=False, log_level="error")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class stopwatch:
    """``with stopwatch() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> stopwatch:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                break
    except OSError:
        pass
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} cores{memory}, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


@dataclass
class Figure:
    """One measured number, optionally checked against a target."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio_to_target(self) -> float | None:
        """How far from the target, as a ratio where > 1 means the target is missed."""
        if self.target is None or self.value is None or math.isnan(self.value):
            return None
        if self.higher_is_better:
            return self.target / self.value if self.value else math.inf
        return self.value / self.target

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        if self.higher_is_better:
            return self.value >= self.target
        return self.value <= self.target

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'≥' if self.higher_is_better else '≤'} {self.target:g}"

    def status(self) -> str:
        ok = self.ok
        return "" if ok is None else ("ok" if ok else "MISSED")


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Report:
    """The figures of one benchmark, printable and renderable as Markdown."""

    title: str
    short: str = ""
    """A few words naming the benchmark in summary tables (the title when empty)."""
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> Figure:
        figure = Figure(*args, **kwargs)  # type: ignore[arg-type]
        self.figures.append(figure)
        return figure

    def line(self, figure: Figure) -> str:
        text = f"  {figure.name:<58} {_fmt(figure.value):>9} {figure.unit}"
        if figure.target is not None:
            text += f"   (target {figure.target_text()} {figure.unit}: {figure.status()})"
        if figure.note:
            text += f"   [{figure.note}]"
        return text

    def print(self) -> None:
        print(f"\n== {self.title}")
        for figure in self.figures:
            print(self.line(figure))
        for note in self.notes:
            print(f"  note: {note}")

    def markdown(self) -> str:
        rows = [
            f"### {self.title}",
            "",
            "| figure | value | unit | target | status |",
            "|---|---:|---|---|---|",
        ]
        for f in self.figures:
            name = f.name + (f" ({f.note})" if f.note else "")
            rows.append(
                f"| {name} | {_fmt(f.value)} | {f.unit} | {f.target_text()} | {f.status()} |"
            )
        if self.notes:
            rows.append("")
            rows += [f"- {note}" for note in self.notes]
        return "\n".join(rows) + "\n"

    def worst_ratio(self) -> float | None:
        ratios = [r for f in self.figures if (r := f.ratio_to_target) is not None]
        return max(ratios) if ratios else None


def load_average() -> str:
    """The 1, 5 and 15-minute load averages, e.g. ``"0.52 0.61 0.70"``."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
