"""Recording calls to language models, with their cost: the ``AICallLogger`` port.

Stages record calls with ``ctx.record_ai_call(AICall(...))``: the rows are written with the
stage outcome in one transaction, and their cost and tokens roll up into the stage's metrics
(``total_cost``, ``total_tokens``) and from there into the run's totals.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["AICall", "AICallLogger"]


class AICall(BaseModel):
    """One call to a language model (any library)."""

    model: str
    """The model's id as the provider names it, e.g. ``"gpt-4o-mini"``."""
    model_key: str | None = None
    """The project's own name for the model configuration (defaults to ``model``)."""
    topic: str = "stage"
    call_type: str = "completion"
    prompt: str = ""
    response: str = ""
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost: float = Field(default=0.0, ge=0)
    temperature: float | None = None
    finish_reason: str | None = None
    duration_ms: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def row_metadata(self) -> dict[str, Any]:
        """What the ``ai_calls.metadata`` column holds."""
        known = {
            "model": self.model,
            "tokens": {"input": self.input_tokens, "output": self.output_tokens},
            "cost": self.cost,
            "temperature": self.temperature,
            "finish_reason": self.finish_reason,
            "duration_ms": self.duration_ms,
        }
        return {**{k: v for k, v in known.items() if v is not None}, **self.metadata}


class AICallLogger(ABC):
    """Where AI calls made outside a stage are recorded."""

    @abstractmethod
    async def record(
        self, call: AICall, *, workflow_run_id: str | None = None, stage_id: str | None = None
    ) -> None:
        """Store one call."""
