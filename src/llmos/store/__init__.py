"""The store: metadata (SQLAlchemy, Alembic) and immutable content-addressed artifacts."""

from llmos.store.artifacts import ArtifactStore, CorruptArtifact
from llmos.store.db import Database, open_database

__all__ = ["ArtifactStore", "CorruptArtifact", "Database", "open_database"]
