"""Names of datasets, models, serving pools and deployments are unique within their team.

Two teams may each have a dataset ``news``; neither name is "taken" for the other, and
nothing tells one team what names another uses. A name is written either bare (``news``)
or qualified by its team (``research/news``):

- reading: a bare name is looked up in every team the caller may see; found in none, it
  is *not found* — the very answer for a name of a team the caller cannot see (no
  oracle); found in several, the caller must say which: 409 with the qualified names
  (a job's own team comes first: its bare names mean its team's when it has one).
- creating: a qualified name goes to that team; a bare one goes to the one team of the
  caller's that already has it (a new version), else to the asked-for, default or home
  team (:meth:`Principal.home_team`); a job's go to its own team, the only one it writes.

Services (datasets, the model registry, deployments) call these with their own table;
routes and clients pass names through as given (``team/name`` included).
"""

from __future__ import annotations

from sqlalchemy import select

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.security.rbac import CREATE, Principal


def split(text: str) -> tuple[str | None, str]:
    """``team/name`` -> (team, name); ``name`` -> (None, name)."""
    team, sep, name = (text or "").partition("/")
    if not sep:
        return None, team
    if not team or "/" in name:
        raise InvalidRequest(f"bad name {text[:200]!r}: NAME or TEAM/NAME")
    return team, name


def qualified(team: str | None, name: str) -> str:
    return f"{team}/{name}" if team else name


def _visible(who: Principal, rows: list) -> list:
    """The rows of teams where ``who`` holds a role (others do not exist for it)."""
    return [r for r in rows if who.role_in(r.team) is not None]


def find(s, who: Principal, table, kind: str, text: str, options=()):
    """The row of ``table`` named ``text`` (bare or ``team/name``) that ``who`` can see:
    NotFound when there is none (whether it is missing or another team's), Conflict when
    a bare name is in several of the caller's teams."""
    team, name = split(text)
    q = select(table).where(table.name == name)
    if team is not None:
        q = q.where(table.team == team)
    rows = _visible(who, list(s.scalars(q.options(*options))))
    if not rows:
        raise NotFound(f"{kind} {text!r} not found")
    if len(rows) > 1:
        own = [r for r in rows if who.home is not None and r.team == who.home]
        if len(own) != 1:
            raise ambiguous(kind, name, rows)
        return own[0]
    return rows[0]


def ambiguous(kind: str, name: str, rows: list) -> Conflict:
    found = ", ".join(sorted(qualified(r.team, r.name) for r in rows))
    return Conflict(f"{kind} name {name!r} is used in several of your teams ({found}); "
                    f"name one as TEAM/{name}")


def for_create(s, who: Principal, table, kind: str, text: str, asked: str | None = None,
               default: str | None = None):
    """Where a new ``kind`` (or a new version of one) named ``text`` goes: returns (team,
    bare name, the existing row of that team or None), having checked CREATE there.

    The team is the name's qualifier or ``asked`` (they must agree), else the one team of
    the caller's that has the name already, else ``default`` when the caller belongs to
    it, else the caller's home team. Another team's use of the name never matters."""
    team, name = split(text)
    if team is not None and asked is not None and team != asked:
        raise InvalidRequest(f"{kind} {text!r} names team {team}, but team {asked} was asked")
    team = team or asked or who.home  # a job creates in its own team
    if team is None:
        rows = _visible(who, list(s.scalars(select(table).where(table.name == name))))
        if len(rows) > 1:
            raise ambiguous(kind, name, rows)
        if rows:
            team = rows[0].team
        elif default is not None and who.role_in(default) is not None:
            team = default
    team = who.home_team(team, CREATE, f"{kind}s")
    row = s.scalars(select(table).where(table.name == name, table.team == team)).first()
    return team, name, row


def for_job(job_team: str | None, team: str | None, name: str) -> str:
    """How a job of ``job_team`` names a resource of ``team``: bare in its own team (a job's
    bare names mean its team's first), ``team/name`` otherwise."""
    return name if team == job_team else qualified(team, name)
