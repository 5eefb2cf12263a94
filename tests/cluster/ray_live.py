"""A live llmos over a test Ray cluster (conftest.py's), shared by the cluster modules."""

from __future__ import annotations

from live import LiveDaemon
from pg import fresh_database


def live_on_ray(cluster, tmp_path_factory, name: str, **env: str):
    """A live `llmos up --ray` on ``cluster`` with its metadata on a fresh PostgreSQL
    database (a multi-node llmos needs it), for a module's tests; ``env``: more settings."""
    home = tmp_path_factory.mktemp(name) / "home"
    home.mkdir()
    with fresh_database(f"llmos_{name}") as url:
        daemon = LiveDaemon(home, env={"LLMOS_DATABASE_URL": url,
                                       "LLMOS_RAY_ADDRESS": cluster.address, **env}).start()
        try:
            yield daemon
        finally:
            daemon.stop()
            daemon.client.close()
