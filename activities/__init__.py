"""Side effects run by the worker: stage code, and side-store writes."""

from activities.run import RunActivities
from activities.stage import StageActivities

__all__ = ["RunActivities", "StageActivities"]
