"""The orphan recovery loop: runs the side-store holds active that no Temporal execution drives.

A run whose Temporal start failed after its row committed stays PENDING, and a RUNNING run
whose execution was terminated, timed out, deleted or never started (a rerun whose start
failed) would stay RUNNING: each pass of ``RunClaimPending`` starts the first kind and
restarts the second. Several workers may run the loop at once: a PENDING run's workflow id
is derived from the run (only one start succeeds), and a restart is a compare-and-set on the
run's execution id, so each orphan is started once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from engine.commands import RunClaimPending, RunClaimPendingResult
from engine.runtime.kernel import Kernel

__all__ = ["RECOVERY_INTERVAL", "recover_orphans", "recovery_loop"]

log = logging.getLogger(__name__)

RECOVERY_INTERVAL = timedelta(seconds=30)
"""Default pause between two recovery passes of ``wfe worker`` and ``wfe dev``."""
RECOVERY_BATCH = 50


async def recover_orphans(
    kernel: Kernel, *, max_claims: int = RECOVERY_BATCH
) -> RunClaimPendingResult:
    """One pass: start PENDING orphans and restart RUNNING runs whose execution is gone."""
    result: RunClaimPendingResult = await kernel.dispatch(RunClaimPending(max_claims=max_claims))
    if result.started or result.restarted:
        log.warning(
            "recovery: started %s, restarted %s",
            ", ".join(result.started) or "none",
            ", ".join(result.restarted) or "none",
        )
    return result


async def recovery_loop(kernel: Kernel, *, interval: timedelta = RECOVERY_INTERVAL) -> None:
    """Run :func:`recover_orphans` every ``interval`` until cancelled."""
    while True:
        try:
            await recover_orphans(kernel)
        except Exception as exc:  # Temporal or the database away: the next pass retries
            log.warning("recovery: pass failed: %s", exc)
        await asyncio.sleep(interval.total_seconds())
