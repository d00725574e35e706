"""The client and what stage code runs with: the layer above the definitions and the store.

:class:`~engine.runtime.kernel.Kernel` (and its parts: annotations, approvals, search
attributes, forks, evidence bundles), the outbox and its plugins and sinks, recovery of
orphaned runs, and the stage side of a run (:mod:`.context`, :mod:`.storage`, :mod:`.blobs`,
:mod:`.approval_stages`). Modules here may import :mod:`engine.core`, :mod:`engine.store`, the
three contract modules beside them and ``temporalio``; never the worker, ``activities``,
``temporal_workflows``, the CLI or the web app (``make lint`` checks it, and the order inside:
kernel above annotations, plugins and sinks, above the outbox, the stage context, storage and
blobs). The public names are re-exported from :mod:`engine`; import them from there.
"""
