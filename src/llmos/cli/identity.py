"""`llmos login | logout | whoami | users | teams | tokens`: identities, roles, quotas,
API tokens. A token's secret is printed once, when it is made."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from llmos.cli.errors import UsageError
from llmos.cli.render import table
from llmos.config import get_settings
from llmos.sdk.client import Client
from llmos.sdk.credentials import forget_token, save_token

users_app = typer.Typer(help="Users (system administrators).", no_args_is_help=True)
teams_app = typer.Typer(help="Teams, their members' roles and their quotas.",
                        no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

ROLES = ("viewer", "developer", "maintainer", "admin")
SCOPES = ("read", "write", "inference", "admin")


def _json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _secret(label: str, token: str) -> None:
    out.print(f"{label}: [bold]{token}[/]")
    out.print("[dim]It is shown this once; llmos keeps only its hash.[/]")


# -- login ------------------------------------------------------------------------------------


def login(
    token: Optional[str] = typer.Option(None, "--token", help="The API token (asked for when "
                                        "omitted; reading it from a prompt keeps it out of "
                                        "your shell history)."),
    url: Optional[str] = typer.Option(None, "--url", help="The daemon (default LLMOS_URL or "
                                      "the local one)."),
) -> None:
    """Check a token against the daemon and remember it for that daemon (mode 0600)."""
    url = (url or get_settings().client_url).rstrip("/")
    if token is None:
        token = typer.prompt("API token", hide_input=True).strip()
    if not token:
        raise UsageError("no token given")
    with Client(url, token=token) as c:
        me = c.whoami()
    path = save_token(url, token, me["name"])
    out.print(f"logged in to {url} as [bold]{me['name']}[/]; token saved in {path}")


def logout(url: Optional[str] = typer.Option(None, "--url", help="The daemon.")) -> None:
    """Forget the token saved for a daemon."""
    url = (url or get_settings().client_url).rstrip("/")
    out.print(f"forgot the token for {url}" if forget_token(url) else f"no token saved for {url}")


def whoami(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Who your token stands for: name, roles per team, scopes."""
    with Client() as c:
        me = c.whoami()
    if as_json:
        return _json(me)
    roles = ", ".join(f"{r} in {t}" for t, r in me["roles"].items()) or "no team"
    out.print(f"[bold]{me['name']}[/]{' (system administrator)' if me['is_admin'] else ''}: "
              f"{roles}; scopes {', '.join(me['scopes'])}; token {me['token_prefix']}…")


# -- users ------------------------------------------------------------------------------------


@users_app.command("create")
def users_create(
    name: str = typer.Argument(..., help="User name (lower-case letters, digits, _ . -)."),
    team: Optional[str] = typer.Option(None, help="Add the user to this team."),
    role: str = typer.Option("developer", help="Their role in --team."),
    admin: bool = typer.Option(False, "--admin", help="A system administrator."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a user; prints their first token (once)."""
    _check_role(role)
    with Client() as c:
        made = c.users.create(name, admin=admin, team=team, role=role)
    if as_json:
        return _json(made)
    out.print(f"user [bold]{name}[/] created" + (f" ({role} in {team})" if team else ""))
    _secret(f"{name}'s token", made["token"])


@users_app.command("ls")
def users_ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every user with their roles."""
    with Client() as c:
        users = c.users.list()
    if as_json:
        return _json(users)
    listed = table("Users", "name", "admin", "disabled", "roles", "created",
                   keep=("admin", "disabled", "created"))
    for u in users:
        listed.add_row(u["name"], "yes" if u["is_admin"] else "",
                       "yes" if u["disabled"] else "",
                       ", ".join(f"{r} in {t}" for t, r in u["roles"].items()),
                       u["created_at"][:19].replace("T", " "))
    out.print(listed)


@users_app.command("disable")
def users_disable(name: str = typer.Argument(..., help="User name.")) -> None:
    """Disable a user: all their tokens stop working at once."""
    with Client() as c:
        c.users.disable(name)
    out.print(f"user [bold]{name}[/] disabled")


@users_app.command("enable")
def users_enable(name: str = typer.Argument(..., help="User name.")) -> None:
    """Enable a disabled user again."""
    with Client() as c:
        c.users.enable(name)
    out.print(f"user [bold]{name}[/] enabled")


# -- teams ------------------------------------------------------------------------------------


@teams_app.command("create")
def teams_create(name: str = typer.Argument(..., help="Team name.")) -> None:
    """Create a team (system administrators)."""
    with Client() as c:
        c.teams.create(name)
    out.print(f"team [bold]{name}[/] created")


@teams_app.command("ls")
def teams_ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Your teams (all teams, for system administrators) with members and quotas."""
    with Client() as c:
        teams = c.teams.list()
    if as_json:
        return _json(teams)
    listed = table("Teams", "team", "members", "quotas")
    for t in teams:
        listed.add_row(t["name"], ", ".join(f"{u} ({r})" for u, r in t["members"].items()),
                       _quotas(t["quotas"]))
    out.print(listed)


def _quotas(q: dict) -> str:
    units = {"cpu": " cpu", "memory_mb": " MB", "gpu": " gpu", "jobs": " jobs",
             "rps": " req/s"}
    parts = [f"{v:g}{units[k]}" for k, v in q.items() if v is not None]
    return ", ".join(parts) or "unlimited"


@teams_app.command("add")
def teams_add(
    team: str = typer.Argument(..., help="Team name."),
    user: str = typer.Argument(..., help="User name."),
    role: str = typer.Option("developer", help="viewer, developer, maintainer or admin."),
) -> None:
    """Add a user to a team, or change their role (team admins)."""
    _check_role(role)
    with Client() as c:
        c.teams.set_member(team, user, role)
    out.print(f"[bold]{user}[/] is {role} in team [bold]{team}[/]")


@teams_app.command("remove")
def teams_remove(team: str = typer.Argument(..., help="Team name."),
                 user: str = typer.Argument(..., help="User name.")) -> None:
    """Remove a user from a team."""
    with Client() as c:
        c.teams.remove_member(team, user)
    out.print(f"[bold]{user}[/] removed from team [bold]{team}[/]")


@teams_app.command("quota")
def teams_quota(
    team: str = typer.Argument(..., help="Team name."),
    cpu: Optional[float] = typer.Option(None, help="CPUs its running jobs may hold."),
    memory: Optional[int] = typer.Option(None, "--memory", help="MB of memory."),
    gpu: Optional[int] = typer.Option(None, help="GPUs."),
    jobs: Optional[int] = typer.Option(None, help="Jobs running at once."),
    rps: Optional[float] = typer.Option(None, help="Serving requests per second."),
) -> None:
    """Set a team's quotas; a quota left out is unlimited (system administrators)."""
    with Client() as c:
        t = c.teams.set_quota(team, cpu=cpu, memory_mb=memory, gpu=gpu, jobs=jobs, rps=rps)
    out.print(f"team [bold]{team}[/] quotas: {_quotas(t['quotas'])}")


# -- tokens -----------------------------------------------------------------------------------


@tokens_app.command("create")
def tokens_create(
    name: str = typer.Option("token", help="A name to recognise it by."),
    scope: list[str] = typer.Option([], "--scope", help="read, write, inference or admin "
                                    "(repeatable; default: all your token has)."),
    expires_in_days: Optional[float] = typer.Option(None, "--expires-in-days",
                                                    help="Expire after this many days."),
    team: Optional[str] = typer.Option(None, help="Act only in this team."),
    user: Optional[str] = typer.Option(None, help="For another user (administrators)."),
    priority: str = typer.Option("normal", help="Serving priority: high, normal or low."),
    rate_limit: Optional[float] = typer.Option(None, "--rate-limit",
                                               help="Serving requests per second."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the secret (for "
                               "scripts: TOKEN=$(llmos tokens create ... -q))."),
) -> None:
    """Create an API token; prints its secret (once)."""
    bad = [s for s in scope if s not in SCOPES]
    if bad:
        raise UsageError(f"unknown scope {bad[0]!r}; scopes: {', '.join(SCOPES)}")
    if priority not in ("high", "normal", "low"):
        raise UsageError(f"--priority must be high, normal or low, not {priority!r}")
    with Client() as c:
        tok = c.tokens.create(name, scopes=scope or None, expires_in_days=expires_in_days,
                              team=team, user=user, priority=priority,
                              rate_limit_rps=rate_limit)
    if as_json:
        return _json(tok)
    if quiet:
        return print(tok["token"])
    out.print(f"token [bold]{tok['id']}[/] ({tok['name']}) for {tok['user']}, scopes "
              f"{', '.join(tok['scopes'])}")
    _secret("token", tok["token"])


@tokens_app.command("ls")
def tokens_ls(
    user: Optional[str] = typer.Option(None, help="Another user's (administrators)."),
    all_: bool = typer.Option(False, "--all", help="Include revoked tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Tokens (never their secrets: a prefix to recognise each)."""
    with Client() as c:
        tokens = c.tokens.list(user, include_revoked=all_)
    if as_json:
        return _json(tokens)
    listed = table("Tokens", "id", "user", "name", "prefix", "scopes", "team", "expires",
                   "last used", "revoked", keep=("id", "prefix", "expires", "last used",
                                                 "revoked"))
    for t in tokens:
        listed.add_row(str(t["id"]), t["user"], t["name"], t["prefix"] + "…",
                       ",".join(t["scopes"]), t["team"] or "", _t(t["expires_at"]),
                       _t(t["last_used_at"]), _t(t["revoked_at"]))
    out.print(listed)


def _t(ts: str | None) -> str:
    return ts[:19].replace("T", " ") if ts else ""


@tokens_app.command("revoke")
def tokens_revoke(token_id: int = typer.Argument(..., min=1, help="Token id (llmos tokens ls).")
                  ) -> None:
    """Revoke a token: it stops working at once."""
    with Client() as c:
        c.tokens.revoke(token_id)
    out.print(f"token [bold]{token_id}[/] revoked")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
