"""The worker process: the engine's workflows and activities on the kernel's task queue.

The one place in ``engine`` that imports ``activities`` and ``temporal_workflows``: it sits
above them and the runtime, and below only the CLI (``wfe worker``, ``wfe dev``). Nothing in
the runtime, the store or the definitions imports it (``make lint`` checks it).
"""

from engine.worker.create import EngineWorker, create_worker, sandboxed_runner

__all__ = ["EngineWorker", "create_worker", "sandboxed_runner"]
