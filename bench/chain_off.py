"""The stage commit without its record chain: the counterfactual issue 21's budget is judged on.

The record chain (``engine.store.chain``) adds a link covering the stage outcome and its
annotations to every stage commit. To show what that costs, the benchmarks run the same
commits with and without it, interleaved in one process: :func:`chain_off` swaps the chain's
functions, where the commit paths call them, for ones that do nothing, and restores them on
exit. A run's first link, written when the run is created, is kept either way: the budget is
about the commit, which every stage pays.

Measurement only: the engine has no switch for this, and a store written with the chain off
does not verify.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from sqlalchemy import Select, bindparam, select

from engine.store import annotation_rows, one_statement, stage_rows
from engine.store.models import RUNS
from engine.store.runs import COMPLETION

__all__ = ["chain_off"]


def _nothing(*_args: Any, **_kwargs: Any) -> None:
    return None


@lru_cache(maxsize=256)
def _commit_statement_without_chain(
    changes: tuple[str, ...], inserts: tuple[Any, ...], completes: bool
) -> Select[Any]:
    """``one_statement._commit_statement`` without the chain's CTEs (cached apart, so that
    switching does not rebuild either side's statements). A commit that completes the run
    still updates the run row, which the chain's ``UPDATE`` does with it on."""
    gate = one_statement.commit_gate(changes)
    statement = one_statement._gated(gate, inserts)
    if not completes:
        return statement
    completed = (
        RUNS.update()
        .where(RUNS.c.id == bindparam("w_run_id"), select(gate.c.id).exists())
        .values(COMPLETION)
        .cte("completed")
    )
    return statement.add_cte(completed)


_SWAPS: list[tuple[Any, str, Any]] = [
    (one_statement, "_commit_statement", _commit_statement_without_chain),
    (one_statement, "chain_params", lambda _links, _annotations: {}),
    (one_statement, "outcome_link", _nothing),
    (annotation_rows, "append_links", _nothing),
    (stage_rows, "outcome_link", _nothing),
]


@contextlib.contextmanager
def chain_off() -> Iterator[None]:
    """Stage commits inside the block write no chain links (see the module doc)."""
    saved = [(module, name, getattr(module, name)) for module, name, _ in _SWAPS]
    for module, name, replacement in _SWAPS:
        setattr(module, name, replacement)
    try:
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
