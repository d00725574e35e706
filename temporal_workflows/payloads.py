"""The run workflow's payload models (defined in :mod:`engine.payloads`)."""

from engine.payloads import *  # noqa: F403
from engine.payloads import __all__ as __all__
