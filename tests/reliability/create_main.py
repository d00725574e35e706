"""Dispatch concurrent ``RunCreate`` commands with one idempotency key from a separate process.

``python tests/reliability/create_main.py <markers dir> <name> <idempotency key> <count>``

Connects with the ``WFE_*`` variables (Temporal address, database URL, task queue), writes
``<dir>/<name>.ready``, waits for ``<dir>/go``, dispatches ``count`` concurrent ``RunCreate``
commands for the ``crashy`` workflow with the key, and prints the run ids as a JSON list.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import Kernel, RunCreate  # noqa: E402
from tests.reliability.workloads import crash_workflow, touch  # noqa: E402


async def main(directory: Path, name: str, key: str, count: int) -> None:
    kernel = await Kernel.connect(workflows=[crash_workflow()])
    try:
        await kernel.store.pending_runs(1)  # the pool has a live connection before the start
        touch(directory / f"{name}.ready")
        go = directory / "go"
        while not go.exists():
            await asyncio.sleep(0.002)
        command = RunCreate(
            workflow_id="crashy",
            input={"dir": str(directory), "mode": "free"},
            idempotency_key=key,
        )
        results = await asyncio.gather(*(kernel.dispatch(command) for _ in range(count)))
        print(json.dumps([result.workflow_run_id for result in results]))
    finally:
        await kernel.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.stdout.flush()
    # Skip interpreter finalization: the Temporal client's native threads may still call into
    # Python while it tears down, which aborts the process ("PyGILState_Release").
    os._exit(0)
