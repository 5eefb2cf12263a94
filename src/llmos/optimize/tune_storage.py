"""Where studies' trials live: Optuna's own RDB storage, beside llmos's tables.

Optuna keeps its schema under its own Alembic history, in a table named
``alembic_version`` — the name llmos's migrations use for theirs. The two must not share
it, so Optuna's tables get a namespace of their own:

- PostgreSQL: the same database, schema ``optuna`` (made here when missing); Optuna's
  connections have ``search_path=optuna``, so its tables, and its ``alembic_version``,
  are there, and llmos's ``public`` ones are out of its sight.
- SQLite: a sibling file of the llmos database, ``<stem>-optuna.db`` (SQLite has no
  schemas; a database file is its namespace), with the same owner-only mode.

Anything else (MySQL ...) is refused: llmos runs on SQLite or PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from llmos.errors import LLMOSError

log = logging.getLogger("llmos.tune")
SCHEMA = "optuna"
_lock = threading.Lock()
_storages: dict[str, object] = {}


def optuna_url(db_url: str) -> tuple[str, dict]:
    """The URL and engine settings Optuna's storage uses for the llmos database at
    ``db_url``."""
    url = make_url(db_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise LLMOSError("tuning needs a database on disk (SQLite :memory: holds no "
                             "studies)")
        path = Path(url.database)
        sibling = path.with_name(f"{path.stem}-optuna.db")
        os.close(os.open(sibling, os.O_WRONLY | os.O_CREAT, 0o600))
        os.chmod(sibling, 0o600)
        return (f"sqlite:///{sibling}",
                {"connect_args": {"timeout": 30, "check_same_thread": False}})
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return (url.render_as_string(hide_password=False),
                {"connect_args": {"options": f"-c search_path={SCHEMA}"},
                 "pool_pre_ping": True})
    raise LLMOSError(f"tuning stores its studies on SQLite or PostgreSQL, not {backend}")


def storage_for(db) -> object:
    """Optuna's RDBStorage for the llmos database ``db`` (one per database and process)."""
    with _lock:
        found = _storages.get(db.url)
        if found is not None:
            return found
        import optuna
        from optuna.storages import RDBStorage

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # llmos logs what happens
        url, kwargs = optuna_url(db.url)
        if make_url(db.url).get_backend_name() == "postgresql":
            with db.engine.begin() as c:
                c.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
        storage = RDBStorage(url, engine_kwargs=kwargs)
        if url.startswith("sqlite"):
            _sqlite_pragmas(storage.engine)
        _storages[db.url] = storage
        return storage


def _sqlite_pragmas(engine) -> None:
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    engine.dispose()  # connections made before the listener get it on their next open


def forget(db) -> None:
    """Close the storage of ``db`` (the system is closing)."""
    with _lock:
        storage = _storages.pop(db.url, None)
    if storage is not None:
        storage.engine.dispose()
