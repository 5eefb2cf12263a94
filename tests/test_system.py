"""The composition root (``llmos.system``): one build from the settings gives every service
the API uses, bootstraps an empty store once, and starts and stops with the app."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient

from live import wait_for
from llmos.api.app import SERVICES, create_app
from llmos.config import Settings
from llmos.system import System


def test_one_build_serves_the_api_and_bootstraps_an_empty_store_once(tmp_path):
    settings = Settings(home=tmp_path / "home", cpus=1)
    boots = []
    system = System(settings, on_bootstrap=boots.append)
    assert [(b.user, b.team) for b in boots] == [("admin", "default")]
    app = create_app(system)
    assert {name: getattr(app.state, name) for name in SERVICES} == {
        name: getattr(system, name) for name in SERVICES}
    with TestClient(app) as http:  # the app's lifespan starts the system, then closes it
        headers = {"Authorization": f"Bearer {boots[0].token}"}
        assert http.get("/v1/auth/whoami", headers=headers).json()["name"] == "admin"
        job = http.post("/v1/jobs", json={"program": "noop"}, headers=headers).json()
        wait_for(lambda: http.get(f"/v1/jobs/{job['id']}", headers=headers)
                 .json()["state"] == "SUCCEEDED", what="the daemon to run a job")
    again = System(settings, on_bootstrap=boots.append)  # the same store: no second admin
    asyncio.run(again.close())
    assert len(boots) == 1


def test_the_gateway_reads_team_serving_quotas_from_the_store(tmp_path):
    boots = []
    system = System(Settings(home=tmp_path / "home", cpus=1), on_bootstrap=boots.append)
    try:
        admin = system.tokens.authenticate(boots[0].token)
        system.identity.set_quota(admin, "default", rps=0)
        assert system.gateway.limits.check(None, None, "default") == (
            60.0, "team default's serving quota (0 requests/s)")
        assert system.gateway.limits.check(None, None, "elsewhere") is None
    finally:
        asyncio.run(system.close())
