"""Rows of the ``ai_calls`` table (pure: shared by the stage commit and the AI call logger)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from engine.core.ai_calls import AICall
from engine.core.ids import new_id

__all__ = ["ai_call_rows"]


def ai_call_rows(
    calls: Sequence[AICall],
    *,
    workflow_run_id: str | None,
    stage_id: str | None,
    now: datetime,
) -> list[dict[str, Any]]:
    """One ``ai_calls`` row per call, for a batched insert."""
    return [
        {
            "id": new_id(),
            "created_at": now,
            "workflow_run_id": workflow_run_id,
            "stage_id": stage_id,
            "topic": call.topic,
            "call_type": call.call_type,
            "model_key": call.model_key or call.model,
            "model_id": call.model,
            "prompt": call.prompt,
            "response": call.response,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cost": call.cost,
            "metadata": call.row_metadata(),
        }
        for call in calls
    ]
