"""What every metadata table is built on: the declarative ``Base`` of the one schema, UTC
datetimes on every backend, and ``utcnow``. The tables are in :mod:`llmos.store.models`
(and :mod:`llmos.store.identity`, which it re-exports).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        # PostgreSQL answers in the session's time zone: read back in UTC, as written (the
        # audit chain hashes the time's text).
        return value.astimezone(timezone.utc) if value is not None else value


class Base(DeclarativeBase):
    pass
