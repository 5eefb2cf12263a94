"""The store: metadata (SQLAlchemy, Alembic) and immutable content-addressed artifacts.

The store knows nothing of roles or ciphers: services (``security.artifacts`` and the
others) check roles, and the cipher that seals blobs is handed to :class:`ArtifactStore`.
Of llmos it may import only ``config`` (and the shared ``errors`` and ``schema``)."""

from llmos.store.artifacts import ArtifactStore, Cipher, CorruptArtifact
from llmos.store.db import Database, open_database

__all__ = ["ArtifactStore", "Cipher", "CorruptArtifact", "Database", "open_database"]
