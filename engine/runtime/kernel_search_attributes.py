"""The Temporal search attributes a kernel's runs carry: which, and whether the server has them.

Each run's execution carries the engine's own attributes (run status, run id, attempt,
workflow id) and the annotation keys its workflow projects (``Workflow.search_attributes``,
else the kernel's ``projected_keys``). The server must have each registered with its type;
:meth:`KernelSearchAttributes.check` says what does not fit when a worker starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from temporalio.client import Client
from temporalio.service import RPCError

from engine.core.search_attributes import (
    ENGINE_SEARCH_ATTRIBUTE_TYPES,
    RUN_STATUS_ATTRIBUTE,
    projection_problems,
)
from engine.core.workflows import Workflow
from engine.errors import SearchAttributesError

__all__ = ["KernelSearchAttributes"]

log = logging.getLogger("engine.runtime.kernel")


class KernelSearchAttributes:
    """The search attributes of a kernel's workflows, and the server's registry of them."""

    def __init__(
        self, client: Client, workflows: Mapping[str, Workflow], projected_keys: Mapping[str, str]
    ) -> None:
        self._client = client
        self._workflows = workflows
        self._projected_keys = projected_keys
        self._registered: dict[str, str] | None = None
        self._warned_missing = False

    def projection(self, workflow_id: str) -> dict[str, str]:
        """Annotation key → Keyword search attribute, for runs of ``workflow_id``.

        What the workflow declares, else (also for a workflow this kernel does not register, as when
        ``wfe run recover`` restarts runs) the kernel's ``projected_keys``.
        """
        workflow = self._workflows.get(workflow_id)
        declared = workflow.search_attributes if workflow is not None else None
        return dict(self._projected_keys if declared is None else declared)

    def wanted(self) -> dict[str, str]:
        """Every custom search attribute the registered workflows use, name → type."""
        wanted = dict(ENGINE_SEARCH_ATTRIBUTE_TYPES)
        for workflow_id in self._workflows:
            wanted.update({name: "Keyword" for name in self.projection(workflow_id).values()})
        wanted.update({name: "Keyword" for name in self._projected_keys.values()})
        return wanted

    async def registered(self) -> dict[str, str]:
        """The server's custom search attributes, name → type (asked once)."""
        if self._registered is None:
            from temporalio.api.enums.v1 import IndexedValueType
            from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

            try:
                response = await self._client.operator_service.list_search_attributes(
                    ListSearchAttributesRequest(namespace=self._client.namespace)
                )
            except RPCError as err:
                log.warning("cannot list the server's search attributes: %s", err)
                self._registered = {}
            else:
                self._registered = {
                    name: IndexedValueType.Name(kind)
                    .removeprefix("INDEXED_VALUE_TYPE_")
                    .title()
                    .replace("_", "")
                    .replace("Keywordlist", "KeywordList")
                    for name, kind in response.custom_attributes.items()
                }
        return self._registered

    async def check(self) -> None:
        """Check the server against the search attributes the workflows use.

        The worker does this when it starts.

        Raises:
            SearchAttributesError: one is registered with another type, more of one type are
                wanted than Temporal allows, or a workflow that declares its own projection
                finds an attribute missing. Missing engine defaults only warn: runs then go
                without those attributes.
        """
        registered = await self.registered()
        wanted = self.wanted()
        missing, problems = projection_problems(wanted, registered)
        declared = {
            name
            for workflow in self._workflows.values()
            if workflow.search_attributes is not None
            for name in workflow.search_attributes.values()
        }
        needed = sorted(set(missing) & declared)
        if needed:
            problems.append(
                f"not registered on the server: {', '.join(needed)} (register each with "
                "`temporal operator search-attribute create --name NAME --type Keyword`)"
            )
        if problems:
            raise SearchAttributesError(
                "Temporal search attributes of namespace "
                f"{self._client.namespace!r} do not fit the workflows: " + "; ".join(problems)
            )
        if missing and not self._warned_missing:
            self._warned_missing = True
            log.warning(
                "Temporal server lacks the search attributes %s: runs go without them "
                "(wfe dev registers them; see docker/scripts/temporal-namespace.sh)",
                ", ".join(missing),
            )

    async def usable(self) -> set[str]:
        """The wanted attributes the server has, with the right type."""
        registered = await self.registered()
        return {name for name, kind in self.wanted().items() if registered.get(name) == kind}

    async def enabled(self) -> bool:
        """Whether the run status attribute exists on the server (checked once)."""
        return RUN_STATUS_ATTRIBUTE.name in await self.usable()
