"""The daemon on PostgreSQL (LLMOS_DATABASE_URL), the scale-out store."""

from __future__ import annotations

import pytest

from live import LiveDaemon, program
from pg import fresh_database

@pytest.fixture
def pg_url():
    with fresh_database("llmos_daemon") as url:
        yield url


def test_jobs_run_and_survive_kill_9_on_postgresql(tmp_path, pg_url):
    home = tmp_path / "home"
    home.mkdir()
    gate = tmp_path / "gate"
    env = {"LLMOS_DATABASE_URL": pg_url}
    first = LiveDaemon(home, env=env).start()
    jobs = first.client.jobs.submit_many([
        {"program": program("gated"), "params": {"marker_dir": str(tmp_path), "gate": str(gate)},
         "resources": {"cpu": 0.5}},
    ] * 3 + [{"program": "echo", "params": {"message": "on postgres"}}])
    ids = [j["id"] for j in jobs]
    first.wait_job(ids[0], states=("RUNNING",))
    first.kill9()
    second = LiveDaemon(home, env=env)
    second.port, second.url, second.client = first.port, first.url, first.client
    second.start()
    try:
        gate.write_text("open")
        done = second.wait_all(ids)
        assert {j["state"] for j in done} == {"SUCCEEDED"}
        assert all(second.client.jobs.get(i)["attempt"] == 1 for i in ids)
        assert "on postgres" in second.client.jobs.logs(ids[-1], stream="stdout")
        assert not (home / "llmos.db").exists()  # the store really was PostgreSQL
    finally:
        second.stop()
