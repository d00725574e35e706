"""The run workflow's payload models (defined in :mod:`engine.core.payloads`)."""

from engine.core.payloads import *  # noqa: F403
from engine.core.payloads import __all__ as __all__
