"""The HTTP API and the provenance viewer (``wfe serve``).

``create_app``, ``serve`` and the access rules of :mod:`engine.web.auth` (named tokens,
principals, rights).
"""

from engine.web.app import RunningServer, create_app, serve, start_server
from engine.web.auth import (
    API_TOKEN_ENV,
    API_TOKENS_ENV,
    API_TOKENS_FILE_ENV,
    AccessPolicy,
    Principal,
    Right,
    TokenConfigError,
    TokenSet,
    require,
    tokens_from_env,
)

__all__ = [
    "API_TOKENS_ENV",
    "API_TOKENS_FILE_ENV",
    "API_TOKEN_ENV",
    "AccessPolicy",
    "Principal",
    "Right",
    "RunningServer",
    "TokenConfigError",
    "TokenSet",
    "create_app",
    "require",
    "serve",
    "start_server",
    "tokens_from_env",
]
