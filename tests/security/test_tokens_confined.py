"""Tokens are confined: a token mints only tokens no wider than itself (scopes, team,
expiry, priority, rate limit), managing tokens needs the ``write`` (or ``admin``) scope,
a job's token mints nothing, and expiry, revocation, a disabled user and a membership
change all take effect on the very next request (the authentication cache never outlives
them). Through a live daemon, as a user would meet them; the job token's case in process.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from live import wait_for
from llmos.errors import Forbidden
from llmos.security.identity import IdentityService
from llmos.security.tokens import TokenService
from llmos.store import open_database
from llmos.store.models import Job


def _error(resp: httpx.Response, status: int) -> str:
    """The JSON error message of a refusal with ``status``."""
    assert resp.status_code == status, resp.text
    return resp.json()["error"]["message"]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_admin_token_restricted_to_a_team_cannot_mint_its_way_out(shared_daemon):
    """The issue's reproduction: an administrator's token restricted to team ``default``
    minted a token with no team, which then read /v1/audit and created an admin user."""
    live = shared_daemon
    live.client.users.create("bystander")
    with live.http() as admin:
        made = admin.post("/v1/tokens", json={"name": "default only", "team": "default"})
    assert made.status_code == 201, made.text
    restricted = made.json()
    assert restricted["team"] == "default"
    with live.http(restricted["token"]) as http:
        minted = http.post("/v1/tokens", json={"name": "escape"})
        assert minted.status_code == 201, minted.text
        assert minted.json()["team"] == "default"  # inherited, not dropped
        assert "acts only in team default" in _error(
            http.post("/v1/tokens", json={"name": "escape", "team": "other"}), 403)
        assert "needs a system administrator" in _error(
            http.post("/v1/tokens", json={"name": "escape", "user": "bystander"}), 403)
    for token in (restricted["token"], minted.json()["token"]):
        with live.http(token) as http:
            assert "needs a system administrator" in _error(http.get("/v1/audit"), 403)
            assert "needs a system administrator" in _error(
                http.post("/v1/users", json={"name": "mallory", "admin": True}), 403)
            # nor may it list (or revoke) other users' tokens
            mine = http.get("/v1/tokens").json()["tokens"]
            assert {t["user"] for t in mine} == {"admin"}
    assert "mallory" not in {u["name"] for u in live.client.users.list()}


def test_a_read_only_token_cannot_create_or_revoke_tokens(shared_daemon):
    live = shared_daemon
    reader_user = live.user("ro-reader")
    reader = reader_user.tokens.create("dashboard", scopes=["read"])
    spare = reader_user.tokens.create("spare")
    before = {t["id"] for t in reader_user.tokens.list()}
    with live.http(reader["token"]) as http:
        for body in ({"name": "more"}, {"name": "more", "scopes": ["read"]}):
            message = _error(http.post("/v1/tokens", json=body), 403)
            assert "lacks the 'write' (or 'admin') scope needed to create tokens" in message
        assert "lacks the 'write' (or 'admin') scope needed to revoke tokens" in _error(
            http.delete(f"/v1/tokens/{spare['id']}"), 403)
        assert http.get("/v1/tokens").status_code == 200  # reading its own list is fine
        assert http.delete(f"/v1/tokens/{reader['id']}").status_code == 200  # itself: yes
    assert {t["id"] for t in reader_user.tokens.list()} == before - {reader["id"]}


def test_an_expiring_token_mints_only_tokens_that_expire_no_later(shared_daemon):
    live = shared_daemon
    user = live.user("ex-user")
    parent = user.tokens.create("a day", expires_in_days=1)
    limit = _when(parent["expires_at"])
    with live.http(parent["token"]) as http:
        child = http.post("/v1/tokens", json={"name": "no expiry asked"})
        assert child.status_code == 201, child.text
        assert _when(child.json()["expires_at"]) == limit  # inherited, not "never"
        assert "cannot create a token that outlives it" in _error(
            http.post("/v1/tokens", json={"name": "longer", "expires_in_days": 2}), 403)
        shorter = http.post("/v1/tokens", json={"name": "shorter", "expires_in_days": 0.5})
        assert shorter.status_code == 201
        assert _when(shorter.json()["expires_at"]) < limit
    with live.http(child.json()["token"]) as http:  # the child is confined the same way
        assert "cannot create a token that outlives it" in _error(
            http.post("/v1/tokens", json={"name": "grandchild", "expires_in_days": 3}), 403)


def test_scopes_priority_and_rate_limit_never_widen(shared_daemon):
    live = shared_daemon
    user = live.user("narrow-user")
    narrow = user.tokens.create("narrow", scopes=["read", "write"], priority="low",
                                rate_limit_rps=2)
    with live.http(narrow["token"]) as http:
        assert "cannot grant scopes its creator's token lacks: inference" in _error(
            http.post("/v1/tokens", json={"scopes": ["read", "inference"]}), 403)
        assert "cannot create a token of a higher priority" in _error(
            http.post("/v1/tokens", json={"priority": "high"}), 403)
        assert "limited to 2 requests per second" in _error(
            http.post("/v1/tokens", json={"rate_limit_rps": 50}), 403)
        child = http.post("/v1/tokens", json={"name": "child", "priority": "low"})
        assert child.status_code == 201, child.text
        assert child.json()["scopes"] == ["read", "write"]
        assert child.json()["rate_limit_rps"] == 2  # inherited


def test_expiry_is_checked_on_every_request_not_after_a_cache_window(shared_daemon):
    """The token is used without pause until it is refused: no request sent after its
    expiry is served (the authentication cache used to serve it up to 5 s longer)."""
    live = shared_daemon
    user = live.user("brief-user")
    short = user.tokens.create("two seconds", expires_in_days=2 / 86400)
    expires = _when(short["expires_at"]).timestamp()
    served_late = []
    with live.http(short["token"]) as http:
        def refused() -> str | None:
            sent = time.time()
            resp = http.get("/v1/auth/whoami")
            if resp.status_code == 200 and sent > expires + 0.05:
                served_late.append(sent - expires)
            return _error(resp, 401) if resp.status_code != 200 else None

        assert "expired at" in wait_for(refused, timeout=20, interval=0.02, what="expiry")
    assert served_late == []


def test_revocation_disable_and_membership_changes_take_effect_on_the_next_request(
        shared_daemon):
    live = shared_daemon
    admin = live.client
    mia = live.user("mia", team="confined-ml", role="developer")
    spare = mia.tokens.create("spare")
    with live.http(spare["token"]) as http:
        assert http.get("/v1/auth/whoami").status_code == 200  # now cached
        mia.tokens.revoke(spare["id"])
        assert "was revoked" in _error(http.get("/v1/auth/whoami"), 401)
    with live.http(mia.token) as http:
        assert http.get("/v1/auth/whoami").json()["roles"] == {"confined-ml": "developer"}
        admin.users.disable("mia")
        assert _error(http.get("/v1/auth/whoami"), 401) == "user mia is disabled"
        admin.users.enable("mia")
        assert http.get("/v1/auth/whoami").status_code == 200
        admin.teams.remove_member("confined-ml", "mia")
        assert http.get("/v1/auth/whoami").json()["roles"] == {}
        assert "not a member of team confined-ml" in _error(http.post("/v1/jobs", json={
            "program": "noop", "team": "confined-ml"}), 403)


def test_a_job_token_mints_and_revokes_nothing(tmp_path):
    """A job's own token (what mint_for_job hands a starting job) cannot create a token
    that would outlive the job or widen it, nor revoke its owner's tokens."""
    db = open_database(f"sqlite:///{tmp_path / 'llmos.db'}")
    try:
        tokens = TokenService(db)
        boot = IdentityService(db, tokens).bootstrap()
        owner = tokens.authenticate(boot.token)
        with db.session() as s:
            job = Job(name="j", program="noop", cpu=1, memory_mb=64, owner="admin",
                      team="default", state="RUNNING")
            s.add(job)
            s.flush()
            job_id = job.id
        as_job = tokens.authenticate(tokens.mint_for_job(job_id))
        assert as_job.job_id == job_id and as_job.home == "default"
        for kwargs in ({}, {"scopes": ["read"], "expires_in_days": 0.01}):
            with pytest.raises(Forbidden, match="a job's token cannot create tokens"):
                tokens.create(as_job, name="outlive the job", **kwargs)
        with pytest.raises(Forbidden, match="a job's token cannot revoke tokens"):
            tokens.revoke(as_job, owner.token_id)
        # and an expiring principal's default is capped at its own expiry
        soon = dataclasses.replace(owner, expires_at=datetime.now(timezone.utc)
                                   + timedelta(hours=1))
        row, _ = tokens.create(soon, name="capped")
        assert row.expires_at == soon.expires_at
    finally:
        db.close()
