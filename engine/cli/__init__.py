"""The ``wfe`` command line (``main`` is the console script; ``app`` the Typer application)."""

from engine.cli.app import app, main

__all__ = ["app", "main"]
