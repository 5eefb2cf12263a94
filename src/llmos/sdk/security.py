"""The client's calls on who may do what: users, teams (members, quotas), tokens, the
audit log and the encryption keys (``/v1/users``, ``/v1/teams``, ``/v1/tokens``,
``/v1/audit``, ``/v1/keys``). Each answer is the API's JSON.

    llmos = Client()
    llmos.teams.create("vision")
    alice = llmos.users.create("alice", team="vision")   # alice["token"]: shown once
    llmos.audit.verify()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from llmos.sdk.client import Client


class Users:
    def __init__(self, client: Client):
        self._c = client

    def create(self, name: str, *, admin: bool = False, team: str | None = None,
               role: str = "developer") -> dict:
        """A new user and their first token (``["token"]``, shown this once)."""
        body = {"name": name, "admin": admin, "role": role}
        if team:
            body["team"] = team
        return self._c.request("POST", "/v1/users", json=body).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/users").json()["users"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", f"/v1/users/{quote(name, safe='')}").json()

    def disable(self, name: str) -> dict:
        return self._c.request("POST", f"/v1/users/{quote(name, safe='')}/disable").json()

    def enable(self, name: str) -> dict:
        return self._c.request("POST", f"/v1/users/{quote(name, safe='')}/enable").json()


class Teams:
    def __init__(self, client: Client):
        self._c = client

    def create(self, name: str) -> dict:
        return self._c.request("POST", "/v1/teams", json={"name": name}).json()

    def list(self) -> list[dict]:
        return self._c.request("GET", "/v1/teams").json()["teams"]

    def get(self, name: str) -> dict:
        return self._c.request("GET", f"/v1/teams/{quote(name, safe='')}").json()

    def set_member(self, team: str, user: str, role: str) -> dict:
        return self._c.request("PUT", f"/v1/teams/{quote(team, safe='')}/members/"
                               f"{quote(user, safe='')}", json={"role": role}).json()

    def remove_member(self, team: str, user: str) -> dict:
        return self._c.request("DELETE", f"/v1/teams/{quote(team, safe='')}/members/"
                               f"{quote(user, safe='')}").json()

    def set_quota(self, team: str, **quotas: float | None) -> dict:
        """cpu, memory_mb, gpu, jobs, rps; None or absent: no limit."""
        return self._c.request("PUT", f"/v1/teams/{quote(team, safe='')}/quota",
                               json=quotas).json()


class Tokens:
    def __init__(self, client: Client):
        self._c = client

    def create(self, name: str = "token", *, scopes: list[str] | None = None,
               expires_in_days: float | None = None, team: str | None = None,
               user: str | None = None, priority: str = "normal",
               rate_limit_rps: float | None = None) -> dict:
        """A new token; its secret is in ``["token"]`` of this answer only."""
        body = {k: v for k, v in {"name": name, "scopes": scopes,
                                  "expires_in_days": expires_in_days, "team": team,
                                  "user": user, "priority": priority,
                                  "rate_limit_rps": rate_limit_rps}.items() if v is not None}
        return self._c.request("POST", "/v1/tokens", json=body).json()

    def list(self, user: str | None = None, include_revoked: bool = False) -> list[dict]:
        params: dict[str, Any] = {"all": include_revoked}
        if user:
            params["user"] = user
        return self._c.request("GET", "/v1/tokens", params=params).json()["tokens"]

    def revoke(self, token_id: int) -> dict:
        return self._c.request("DELETE", f"/v1/tokens/{int(token_id)}").json()


class Audit:
    def __init__(self, client: Client):
        self._c = client

    def list(self, actor: str | None = None, action: str | None = None,
             target: str | None = None, since: str | None = None, until: str | None = None,
             limit: int = 100) -> list[dict]:
        params = {k: v for k, v in {"actor": actor, "action": action, "target": target,
                                    "since": since, "until": until, "limit": limit}.items()
                  if v is not None}
        return self._c.request("GET", "/v1/audit", params=params).json()["records"]

    def verify(self) -> dict:
        return self._c.request("GET", "/v1/audit/verify").json()


class Keys:
    def __init__(self, client: Client):
        self._c = client

    def rotate(self) -> dict:
        """New encryption key; every encrypted artifact re-encrypted; old keys retired."""
        return self._c.request("POST", "/v1/keys/rotate").json()
