"""Exporters of committed run records to other tools, as outbox plugins."""
