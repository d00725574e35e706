"""The typed-key catalog: keys, value types, stability, run-time checks and mypy checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.conventions import (
    CATALOG,
    Approval,
    Decision,
    Revision,
    Trigger,
    TypedKey,
    annotation_value,
    typed_key,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# ENGINE-SEMANTICS.md section 6, "Conventions": (attribute, key, value type, stability).
SPEC: list[tuple[TypedKey[Any], str, Any, str]] = [
    (Trigger.source, "trigger.source", str, "stable"),
    (Trigger.parent_run_id, "trigger.parent_run_id", str, "stable"),
    (Trigger.reason, "trigger.reason", str, "stable"),
    (Trigger.actor_kind, "trigger.actor.kind", str, "stable"),
    (Trigger.actor_id, "trigger.actor.id", str, "stable"),
    (Decision.outcome, "decision.outcome", Any, "stable"),
    (Decision.rationale, "decision.rationale", str, "stable"),
    (Decision.confidence, "decision.confidence", float, "stable"),
    (Decision.alternatives, "decision.alternatives", list, "stable"),
    (Decision.used_fallback, "decision.used_fallback", bool, "experimental"),
    (Approval.approvers, "approval.approvers", list[str], "stable"),
    (Approval.timestamp, "approval.timestamp", str, "stable"),
    (Approval.policy_version, "approval.policy.version", str, "experimental"),
    (Approval.outcome, "approval.outcome", str, "experimental"),
    (Approval.comment, "approval.comment", str, "experimental"),
    (Revision.previous_run_id, "revision.previous_run_id", str, "stable"),
    (Revision.reason, "revision.reason", str, "stable"),
]


@pytest.mark.parametrize(
    ("typed", "key", "value_type", "stability"), SPEC, ids=[row[1] for row in SPEC]
)
def test_catalog_entry(typed: TypedKey[Any], key: str, value_type: Any, stability: str) -> None:
    assert typed.key == key
    assert typed.value_type == value_type
    assert typed.stability == stability
    assert typed.description


def test_catalog_is_exactly_the_spec() -> None:
    assert [typed.key for typed in CATALOG] == [row[1] for row in SPEC]
    public = {
        namespace.__name__: sorted(name for name in vars(namespace) if not name.startswith("_"))
        for namespace in (Trigger, Decision, Approval, Revision)
    }
    assert public == {
        "Trigger": ["actor_id", "actor_kind", "parent_run_id", "reason", "source"],
        "Decision": ["alternatives", "confidence", "outcome", "rationale", "used_fallback"],
        "Approval": ["approvers", "comment", "outcome", "policy_version", "timestamp"],
        "Revision": ["previous_run_id", "reason"],
    }


def test_typed_key_defaults() -> None:
    custom = typed_key("acme.review.score", int)
    assert (custom.key, custom.value_type) == ("acme.review.score", int)
    assert custom.stability == "experimental"
    assert custom.description is None
    stable = typed_key("acme.review.by", str, stability="stable", description="Reviewer.")
    assert (stable.stability, stable.description) == ("stable", "Reviewer.")


def test_typed_key_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Decision.confidence.key = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("key", "stability"), [("", "stable"), ("acme.x", "beta")], ids=["empty-key", "stability"]
)
def test_typed_key_rejects_bad_arguments(key: str, stability: Any) -> None:
    with pytest.raises(ValueError):
        typed_key(key, str, stability=stability)


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        (Decision.confidence, 0.42),
        (Decision.confidence, 1),
        (Decision.outcome, {"any": ["json"]}),
        (Decision.outcome, True),
        (Decision.alternatives, ["low", 2]),
        (Decision.alternatives, []),
        (Decision.used_fallback, False),
        (Approval.approvers, ["alice@acme.com", "bob@acme.com"]),
        (Approval.approvers, []),
        (Trigger.source, "webhook:zendesk"),
        (Decision.confidence, None),  # None is dropped later, never a type error
        (typed_key("acme.count", int), 3),
        (typed_key("acme.maybe", int | None), None),
        (typed_key("acme.scores", dict[str, float]), {"a": 1, "b": 0.5}),
    ],
)
def test_check_accepts(typed: TypedKey[Any], value: object) -> None:
    typed.check(value)


@pytest.mark.parametrize(
    ("typed", "value", "message"),
    [
        (Decision.confidence, "x", "annotation key 'decision.confidence' expects float, got str"),
        (Decision.confidence, True, "annotation key 'decision.confidence' expects float, got bool"),
        (
            Approval.approvers,
            "alice",
            "annotation key 'approval.approvers' expects list[str], got str",
        ),
        (
            Approval.approvers,
            ["alice", 7],
            "annotation key 'approval.approvers' expects list[str], got list[int | str]",
        ),
        (Decision.alternatives, ("a",), "annotation key 'decision.alternatives' expects list"),
        (
            Decision.used_fallback,
            1,
            "annotation key 'decision.used_fallback' expects bool, got int",
        ),
        (Trigger.source, 3, "annotation key 'trigger.source' expects str, got int"),
        (typed_key("acme.count", int), True, "annotation key 'acme.count' expects int, got bool"),
        (
            typed_key("acme.scores", dict[str, float]),
            {"a": "x"},
            "annotation key 'acme.scores' expects dict[str, float], got dict",
        ),
    ],
)
def test_check_rejects(typed: TypedKey[Any], value: object, message: str) -> None:
    with pytest.raises(TypeError) as info:
        typed.check(value)
    assert str(info.value).startswith(message)


def test_annotation_value_checks_and_returns() -> None:
    assert annotation_value(Decision.confidence, 0.4) == 0.4
    assert annotation_value(Approval.approvers, ["a"]) == ["a"]
    with pytest.raises(TypeError, match="expects float"):
        annotation_value(Decision.confidence, "high")  # type: ignore[misc]


GOOD_SNIPPET = """
from engine.conventions import Approval, Decision, annotation_value, typed_key

annotation_value(Decision.confidence, 0.4)
annotation_value(Decision.confidence, 1)
annotation_value(Decision.outcome, {"anything": [1, "x"]})
annotation_value(Approval.approvers, ["alice"])
annotation_value(typed_key("acme.count", int), 3)
reveal_type(Decision.confidence)
reveal_type(typed_key("acme.tags", list[str]))
"""

BAD_SNIPPET = """
from engine.conventions import Approval, Decision, annotation_value

annotation_value(Decision.confidence, "high")
annotation_value(Approval.approvers, "alice")
annotation_value(Approval.approvers, [1])
"""


@pytest.fixture(scope="module")
def mypy_output(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Run ``mypy --strict`` once over both snippets; return each snippet's output lines."""
    tmp = tmp_path_factory.mktemp("mypy")
    files = {"good": tmp / "snippet_good.py", "bad": tmp / "snippet_bad.py"}
    files["good"].write_text(GOOD_SNIPPET)
    files["bad"].write_text(BAD_SNIPPET)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            # Errors elsewhere in the package (edited concurrently) are not this test's concern.
            "--follow-imports=silent",
            "--no-error-summary",
            "--cache-dir",
            str(tmp / "cache"),
            *(str(path) for path in files.values()),
        ],
        cwd=PROJECT_ROOT,  # so that the engine package and the pyproject mypy config resolve
        capture_output=True,
        text=True,
        check=False,
        timeout=110,
    )
    assert not result.stderr, result.stderr
    return {
        name: [line for line in result.stdout.splitlines() if line.startswith(str(path))]
        for name, path in files.items()
    }


def _error_line_numbers(lines: list[str]) -> list[int]:
    return sorted(int(line.split(":")[1]) for line in lines if ": error:" in line)


def test_mypy_accepts_matching_values(mypy_output: dict[str, list[str]]) -> None:
    lines = mypy_output["good"]
    assert _error_line_numbers(lines) == [], lines
    # Older mypy versions qualify builtins ("builtins.float"); newer ones do not.
    revealed = "\n".join(lines).replace("builtins.", "")
    assert 'Revealed type is "engine.conventions.TypedKey[float]"' in revealed
    assert 'Revealed type is "engine.conventions.TypedKey[list[str]]"' in revealed


def test_mypy_rejects_mismatched_values(mypy_output: dict[str, list[str]]) -> None:
    lines = mypy_output["bad"]
    assert _error_line_numbers(lines) == [4, 5, 6], lines
