"""A fresh PostgreSQL database per use, on the server every dev and CI machine runs.

When the server cannot be reached the test fails loudly (never skips) and says how to
start it. :func:`postgres_daemon` runs a live daemon on such a database, and
:func:`postgres_daemon_fixture` makes a fixture of one.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def fresh_database(prefix: str = "llmos_test", timezone: str | None = None) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards. ``timezone``: the
    database's session time zone (the server's default, UTC here, otherwise)."""
    import psycopg

    try:
        admin = psycopg.connect(f"{SERVER}/postgres", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        pytest.fail(
            "\n*** PostgreSQL is required on 127.0.0.1:5432 for the store tests and could not "
            f"be reached ({e}).\n*** Start it with: pg_ctlcluster --skip-systemctl-redirect "
            "$(ls /etc/postgresql) main start", pytrace=False)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    if timezone is not None:
        admin.execute(f'ALTER DATABASE "{name}" SET timezone TO \'{timezone}\'')
    try:
        yield f"{SERVER}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def postgres_daemon(home: Path):
    """A live daemon (tests/live.py) whose store is a fresh PostgreSQL database, set to a
    time zone other than UTC as many servers are; stopped and dropped afterwards."""
    from live import LiveDaemon

    with fresh_database("llmos_live", timezone="America/New_York") as url:
        live = LiveDaemon(home, env={"LLMOS_DATABASE_URL": url}).start()
        try:
            assert not (home / "llmos.db").exists()  # the store really is PostgreSQL
            yield live
        finally:
            live.stop()
            live.client.close()


def postgres_daemon_fixture(scope: str = "module"):
    """A fixture yielding a live daemon on PostgreSQL; a test module assigns it to the name
    of the daemon fixture its tests take, so the same tests run on PostgreSQL."""

    @pytest.fixture(scope=scope)
    def fixture(tmp_path_factory):
        home = tmp_path_factory.mktemp("pg") / "home"
        home.mkdir()
        with postgres_daemon(home) as live:
            yield live

    return fixture
