"""The side-store's schema history: Alembic revisions that ``engine.store.migrate`` applies."""
