"""The demo application: support-ticket triage, an example of an application on the engine.

Outside the library's core on purpose: it is what ``wfe demo`` (``make demo``) runs and what
``wfe worker``, ``wfe dev`` and ``wfe run create`` register when no ``--workflows`` is given
(``wfe_demo:WORKFLOWS``), and it uses the engine as an application would: its public API, the
CLI's renderer and local stack, the web app. The CLI imports it only when one of those commands
runs; nothing in ``engine``, ``activities`` or ``temporal_workflows`` imports it otherwise
(``make lint`` checks it).
"""

from wfe_demo.triage import (
    DEMO_DATABASE_URL,
    DEMO_TICKET,
    TRIAGE,
    WORKFLOWS,
    DemoResult,
    build_triage_workflow,
    render_demo,
    run_demo,
    run_triage_demo,
)

__all__ = [
    "DEMO_DATABASE_URL",
    "DEMO_TICKET",
    "TRIAGE",
    "WORKFLOWS",
    "DemoResult",
    "build_triage_workflow",
    "render_demo",
    "run_demo",
    "run_triage_demo",
]
