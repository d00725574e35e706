"""The definitions: the bottom layer, what the rest of the engine is made of.

Stages and workflows as users define them (:mod:`.stages`, :mod:`.workflows`), the records and
values the engine hands back (:mod:`.records`, :mod:`.annotations`, :mod:`.values`), the
payloads the workflow and its activities exchange (:mod:`.payloads`, :mod:`.plans`), ids, the
clock, the settings and the search attributes a run projects. Modules here do no I/O: they
may import each other, :mod:`engine.errors`, :mod:`engine.conventions` and pure libraries
(pydantic, ``temporalio.common``), never the store, the runtime, the worker, the CLI, the web
app or SQLAlchemy (``make lint`` checks it). The public names are re-exported from
:mod:`engine`; import them from there.
"""
