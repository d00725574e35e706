"""The import-linter contracts ``make lint`` runs catch a wrong-way import.

The contracts are only worth their place in CI if they fail on the imports they forbid: on a
copy of the project's packages, each case adds one such import and ``lint-imports`` must exit
non-zero naming the broken contract; the unchanged copy must pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "activities", "temporal_workflows", "wfe_demo")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

WRONG_WAY = [
    pytest.param(
        "temporal_workflows/run.py",
        "import engine.store\n",
        "Workflow code is deterministic",
        id="workflow-code-reaches-the-store",
    ),
    pytest.param(
        "engine/store/runs.py",
        "import engine.runtime.kernel\n",
        "The side-store sits beside the definitions",
        id="store-imports-the-kernel",
    ),
    pytest.param(
        "engine/core/stages.py",
        "import sqlalchemy\n",
        "Definitions are the bottom layer",
        id="definitions-import-sql",
    ),
    pytest.param(
        "engine/runtime/outbox.py",
        "import engine.runtime.kernel\n",
        "Inside the runtime",
        id="outbox-imports-the-kernel",
    ),
]


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("layers")
    shutil.copy(ROOT / "pyproject.toml", copy)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return copy


def lint_imports(folder: Path) -> subprocess.CompletedProcess[str]:
    # The copy comes first on the path, before the editable install's finder.
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_project_keeps_every_contract(project_copy: Path) -> None:
    result = lint_imports(project_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(("module", "line", "contract"), WRONG_WAY)
def test_a_wrong_way_import_fails_lint(
    project_copy: Path, module: str, line: str, contract: str
) -> None:
    path = project_copy / module
    original = path.read_text()
    path.write_text(original + "\n" + line)
    try:
        result = lint_imports(project_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    broken = result.stdout.split("Broken contracts")[-1]
    assert contract in broken, result.stdout
