"""A fresh PostgreSQL database per use, on the server every dev and CI machine runs.

When the server cannot be reached the test fails loudly (never skips) and says how to
start it.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

SERVER = "postgresql://postgres@127.0.0.1:5432"


@contextmanager
def fresh_database(prefix: str = "llmos_test") -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
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
    try:
        yield f"{SERVER}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
