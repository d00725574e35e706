"""Deterministic Temporal workflow code: the run workflow and its payload models."""

from temporal_workflows.pipeline import PipelineWorkflow
from temporal_workflows.run import RunWorkflow

__all__ = ["PipelineWorkflow", "RunWorkflow"]
