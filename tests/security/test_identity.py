"""Identities and tokens through a live daemon: the first start's administrator, hashed
tokens with scopes, expiry and revocation, a job's own token, the CLI's login, and the
slowing down of repeated failed logins."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import sys

import httpx
import pytest
from sqlalchemy import text

from live import LiveDaemon, program, wait_for
from llmos.sdk import APIError
from llmos.store import open_database
from llmos.store.models import Base


def llmos(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], env=env,
                          input=input, capture_output=True, text=True, timeout=120)


def stored_tokens_and_dump(daemon) -> tuple[list[tuple], str]:
    """The (prefix, hash) of every stored token, and every row of every table as text, read
    from the daemon's store (SQLite in its home, or its LLMOS_DATABASE_URL)."""
    url = daemon.env.get("LLMOS_DATABASE_URL") or f"sqlite:///{daemon.home / 'llmos.db'}"
    db = open_database(url, migrate=False)
    try:
        with db.engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(text("SELECT prefix, hash FROM api_tokens"))]
            dump = "\n".join(str(tuple(r)) for table in Base.metadata.sorted_tables
                             for r in conn.execute(table.select()))
    finally:
        db.close()
    return rows, dump


def test_the_first_start_makes_an_administrator_whose_token_is_stored_only_hashed(daemon):
    token = daemon.admin_token
    me = daemon.client.whoami()
    assert me["name"] == "admin" and me["is_admin"] and me["roles"] == {"default": "admin"}
    creds = daemon.home / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert token not in daemon.log()  # the daemon's output is a log file here, not a terminal
    rows, dump = stored_tokens_and_dump(daemon)
    assert rows == [(token[:12], hashlib.sha256(token.encode()).hexdigest())]
    assert token not in dump and len(token) >= 6 + 43  # 256 random bits, url-safe base64
    # A second start of the same store makes no new administrator.
    daemon.stop()
    again = LiveDaemon(daemon.home, env={k: v for k, v in daemon.env.items()
                                         if k == "LLMOS_DATABASE_URL"}).start()
    try:
        assert len(again.client.users.list()) == 1
        assert again.log().count("First start") == 1
    finally:
        again.stop()


def test_every_route_but_healthz_needs_a_valid_token(daemon):
    with httpx.Client(base_url=daemon.url) as anon:
        assert anon.get("/healthz").status_code == 200
        for path in ("/v1/jobs", "/openapi.json", "/docs", "/v1/no/such/route"):
            resp = anon.get(path)
            assert resp.status_code == 401 and resp.headers["www-authenticate"].startswith("Bearer")
            assert "needs an API token" in resp.json()["error"]["message"]
        for bad in ("llmos_" + "A" * 43, "not-even-a-token", "Basic abc"):
            resp = anon.get("/v1/jobs", headers={"Authorization": f"Bearer {bad}"})
            assert resp.status_code == 401 and resp.json()["error"]["message"] == "invalid token"


def test_tokens_expire_are_revoked_and_die_with_their_user(daemon):
    admin = daemon.client
    bob = daemon.user("bob")
    assert bob.whoami()["name"] == "bob"
    short = bob.tokens.create("short", expires_in_days=1 / 86400)  # one second
    spare = bob.tokens.create("spare")
    assert spare["token"].startswith("llmos_") and spare["prefix"] == spare["token"][:12]
    listed = {t["name"]: t for t in bob.tokens.list()}
    assert set(listed) == {"first token", "short", "spare"}
    assert all("token" not in t for t in listed.values())  # secrets are never listed again

    def refused(token: str) -> str | None:
        resp = httpx.get(f"{daemon.url}/v1/auth/whoami",
                         headers={"Authorization": f"Bearer {token}"})
        return resp.json()["error"]["message"] if resp.status_code == 401 else None

    assert "expired at" in wait_for(lambda: refused(short["token"]), what="expiry")
    bob.tokens.revoke(spare["id"])
    assert "was revoked" in refused(spare["token"])
    with pytest.raises(APIError) as e:  # one user cannot revoke another's token
        bob.tokens.revoke(admin.tokens.list()[0]["id"])
    assert e.value.status == 404
    admin.users.disable("bob")
    assert refused(bob.token) == "user bob is disabled"
    admin.users.enable("bob")
    assert bob.whoami()["name"] == "bob"


def test_scopes_narrow_what_a_token_may_do(daemon):
    carol = daemon.user("carol", role="developer")
    reader = carol.tokens.create("dashboard", scopes=["read"])
    with daemon.http(reader["token"]) as http:
        assert http.get("/v1/jobs").status_code == 200
        resp = http.post("/v1/jobs", json={"program": "noop"})
        assert resp.status_code == 403
        assert "lacks the 'write' scope" in resp.json()["error"]["message"]
        resp = http.post("/v1/tokens", json={"scopes": ["read"]})
        assert resp.status_code == 403
        assert "lacks the 'write' (or 'admin') scope needed to create tokens" in resp.text
    writer = carol.tokens.create("ci", scopes=["read", "write"])
    with daemon.http(writer["token"]) as http:
        resp = http.post("/v1/tokens", json={"scopes": ["read", "inference"]})
        assert resp.status_code == 403
        assert "cannot grant scopes its creator's token lacks: inference" in resp.text
    with pytest.raises(APIError) as e:
        carol.tokens.create(scopes=["root"])
    assert e.value.status == 422


def test_a_job_gets_its_own_token_through_its_launch_file_never_its_environment(daemon,
                                                                                 tmp_path):
    dave = daemon.user("dave", team="ml", role="developer")
    # what it saw, written in its own folder (a member's job can write nowhere else)
    job = dave.jobs.submit(program("whoami"), {"out": "whoami.json"})
    assert daemon.wait_job(job["id"])["state"] == "SUCCEEDED"
    seen = json.loads((daemon.home / "jobs" / str(job["id"]) / "whoami.json").read_text())
    assert seen["me"]["name"] == "dave" and seen["me"]["job_id"] == job["id"]
    assert seen["me"]["team"] == "ml" and seen["me"]["roles"] == {"ml": "developer"}
    art = dave.artifacts.get(seen["artifact"])
    assert (art["team"], art["owner"], art["job_id"]) == ("ml", "dave", job["id"])
    launch = daemon.home / "jobs" / str(job["id"]) / "launch.claimed.json"
    assert stat.S_IMODE(launch.stat().st_mode) == 0o600
    job_token = json.loads(launch.read_text())["api_token"]
    assert job_token.startswith("llmos_")
    assert not any(job_token in value for value in seen["env"].values())
    assert not any(k.startswith("LLMOS_") for k in seen["env"])
    resp = httpx.get(f"{daemon.url}/v1/jobs", headers={"Authorization": f"Bearer {job_token}"})
    assert resp.status_code == 401 and "no longer running" in resp.json()["error"]["message"]
    assert job_token not in daemon.log()


def test_login_whoami_and_logout_through_the_cli(daemon, tmp_path):
    erin = daemon.user("erin", role="viewer")
    env = daemon.cli_env()
    del env["LLMOS_TOKEN"]
    env["LLMOS_HOME"] = str(tmp_path / "erin-home")
    assert llmos(env, "whoami").returncode == 1
    bad = llmos(env, "login", "--token", "llmos_wrong")
    assert bad.returncode == 1 and "invalid token" in bad.stderr and "Traceback" not in bad.stderr
    ok = llmos(env, "login", input=erin.token + "\n")  # asked for, not echoed
    assert ok.returncode == 0 and "as erin" in ok.stdout
    creds = tmp_path / "erin-home" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    who = llmos(env, "whoami")
    assert who.returncode == 0 and "viewer in default" in who.stdout
    assert llmos(env, "logout").returncode == 0
    assert "needs an API token" in llmos(env, "job", "list").stderr


def test_users_teams_quotas_and_tokens_through_the_cli(daemon):
    env = daemon.cli_env()
    assert llmos(env, "teams", "create", "vision").returncode == 0
    made = llmos(env, "users", "create", "fay", "--team", "vision", "--role", "maintainer")
    assert made.returncode == 0 and "fay's token: llmos_" in made.stdout
    quota = llmos(env, "teams", "quota", "vision", "--cpu", "1", "--jobs", "2")
    assert quota.returncode == 0 and "1 cpu, 2 jobs" in quota.stdout
    listed = llmos(env, "teams", "ls")
    assert "fay (maintainer)" in listed.stdout and "1 cpu, 2 jobs" in listed.stdout
    assert llmos(env, "teams", "add", "vision", "fay", "--role", "boss").returncode == 2
    tok = json.loads(llmos(env, "tokens", "create", "--name", "ci", "--scope", "read",
                           "--json").stdout)
    assert tok["scopes"] == ["read"]
    assert "ci" in llmos(env, "tokens", "ls").stdout
    assert llmos(env, "tokens", "revoke", str(tok["id"])).returncode == 0
    users = llmos(env, "users", "ls")
    assert "maintainer in vision" in users.stdout


def test_repeated_failed_logins_are_slowed_down_but_working_tokens_pass(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    live = LiveDaemon(home, env={"LLMOS_AUTH_FREE_FAILURES": "3"}).start()
    try:
        live.client.whoami()  # the admin's token is known to work
        fresh = live.client.tokens.create("fresh")["token"]
        with httpx.Client(base_url=live.url) as anon:
            def attempt(token: str) -> httpx.Response:
                return anon.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})

            assert [attempt("llmos_guess").status_code for _ in range(3)] == [401] * 3
            throttled = attempt("llmos_guess")
            assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
            assert "too many failed authentications" in throttled.json()["error"]["message"]
            assert attempt(fresh).status_code == 200  # a valid token never waits
            assert attempt(live.admin_token).status_code == 200
            wait_for(lambda: attempt("llmos_guess").status_code == 401, timeout=10,
                     what="the wait after failed logins to pass")
        outcomes = [r["outcome"] for r in live.client.audit.list(action="auth failed")]
        assert outcomes.count("401") == 4 and outcomes.count("429") >= 1  # each one recorded
    finally:
        live.stop()
