"""The workflow modules are compiled once per process, and still executed afresh per import."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.worker.workflow_code import _CompiledOnce, _WorkflowCodeFinder, cache_workflow_code


@pytest.fixture
def package(tmp_path: Path) -> Iterator[str]:
    """A throwaway package ``wfe_code_probe`` on ``sys.path``, with the finder installed."""
    root = tmp_path / "wfe_code_probe"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "flows.py").write_text(
        textwrap.dedent(
            """
            import itertools
            counter = itertools.count()
            instance_state = []
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    cache_workflow_code("wfe_code_probe")
    try:
        yield "wfe_code_probe"
    finally:
        sys.meta_path[:] = [
            f
            for f in sys.meta_path
            if not (isinstance(f, _WorkflowCodeFinder) and f.package == "wfe_code_probe")
        ]
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("wfe_code_probe")]:
            del sys.modules[name]


def _fresh_import(name: str) -> object:
    """Import ``name`` anew, as the sandbox does for every workflow instance."""
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_each_import_executes_afresh_from_one_compilation(package: str) -> None:
    first = _fresh_import(f"{package}.flows")
    second = _fresh_import(f"{package}.flows")

    assert first is not second
    assert first.instance_state is not second.instance_state  # type: ignore[attr-defined]
    assert isinstance(first.__spec__.loader, _CompiledOnce)  # type: ignore[union-attr]
    codes = [c for (path, _), c in _CompiledOnce._codes.items() if path == first.__file__]
    assert len(codes) == 1


def test_an_edited_module_is_compiled_again(package: str, tmp_path: Path) -> None:
    first = _fresh_import(f"{package}.flows")
    path = Path(str(first.__file__))
    path.write_text("value = 2\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    again = _fresh_import(f"{package}.flows")

    assert again.value == 2  # type: ignore[attr-defined]


def test_installing_twice_adds_one_finder(package: str) -> None:
    cache_workflow_code(package)

    finders = [
        f for f in sys.meta_path if isinstance(f, _WorkflowCodeFinder) and f.package == package
    ]
    assert len(finders) == 1


def test_the_engine_workflow_module_gets_the_caching_loader() -> None:
    import temporal_workflows

    spec = _WorkflowCodeFinder("temporal_workflows").find_spec(
        "temporal_workflows.run", list(temporal_workflows.__path__)
    )

    assert spec is not None and isinstance(spec.loader, _CompiledOnce)
