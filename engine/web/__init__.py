"""The HTTP API and the provenance viewer (``wfe serve``): ``create_app`` and ``serve``."""

from engine.web.app import (
    API_TOKEN_ENV,
    RunningServer,
    api_token_from_env,
    create_app,
    serve,
    start_server,
)

__all__ = [
    "API_TOKEN_ENV",
    "RunningServer",
    "api_token_from_env",
    "create_app",
    "serve",
    "start_server",
]
