"""Who may do what: roles per team, token scopes, and the check every service makes.

Every resource (job, artifact, dataset, model, deployment) belongs to a team. A user holds
one role per team — viewer < developer < maintainer < admin — and a token carries scopes
that narrow what its holder may do with it. Services, not routes, call
:meth:`Principal.check` before they read or change anything, so no face of llmos (REST
API, CLI, SDK, a job calling back) can go around it.

A resource of a team the principal has no role in is reported as *not found* — the same
answer as for a resource that does not exist — so nothing leaks across teams. A role too
low for the operation is *forbidden*, with a message naming the role that would do.

This module owns the rules only; identities and tokens live in ``identity`` and
``tokens``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from llmos.errors import Forbidden, InvalidRequest, NotFound
from llmos.security.audit import note_admin, note_team_read


class Role(enum.IntEnum):
    VIEWER = 1
    DEVELOPER = 2
    MAINTAINER = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise InvalidRequest(f"unknown role {text!r}; one of {', '.join(ROLES)}") from None


ROLES = tuple(r.label for r in Role)
# read: look at resources; write: create and change them; inference: call served models;
# admin: manage users, teams, quotas, keys and read the audit log.
SCOPES = ("read", "write", "inference", "admin")
# How the security signals name "every team": an unrestricted administrator listed
# objects of all teams (``readable_teams`` answered None).
ALL_TEAMS = "*"


@dataclass(frozen=True)
class Need:
    """What one kind of operation needs: a least role in the resource's team, a scope."""

    role: Role
    scope: str
    verb: str


READ = Need(Role.VIEWER, "read", "read")
CREATE = Need(Role.DEVELOPER, "write", "create")
MANAGE = Need(Role.MAINTAINER, "write", "manage")
ADMINISTER = Need(Role.ADMIN, "admin", "administer")
INFER = Need(Role.VIEWER, "inference", "use")


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user through one of their tokens, or a job through its own token."""

    name: str
    user_id: int | None
    is_admin: bool = False
    roles: dict[str, Role] = field(default_factory=dict)  # team -> role
    scopes: frozenset[str] = frozenset(SCOPES)
    team: str | None = None  # the token acts only in this team
    home: str | None = None  # where new resources go by default (a job's team)
    job_id: int | None = None  # a job's own token
    token_id: int | None = None
    token_prefix: str | None = None
    priority: str = "normal"  # serving: the tenant's priority class
    rate_limit_rps: float | None = None
    expires_at: datetime | None = None  # the token's own expiry (tokens it mints end sooner)

    @property
    def actor(self) -> str:
        """How the audit log names this principal."""
        return f"{self.name} (job {self.job_id})" if self.job_id else self.name

    def role_in(self, team: str | None) -> Role | None:
        if team is None or (self.team is not None and team != self.team):
            return None
        if self.is_admin:
            return Role.ADMIN
        return self.roles.get(team)

    def check(self, need: Need, team: str | None, what: str) -> None:
        """Allow ``need`` on ``what`` (e.g. "job 12") of ``team``, or raise: NotFound when
        the principal has no role in that team, Forbidden when the role or the token's
        scopes fall short."""
        role = self.role_in(team)
        if role is None:
            raise NotFound(f"{what} not found")
        self._check_scope(need, what)
        if role < need.role:
            raise Forbidden(f"{self.name} is {role.label} in team {team}; to {need.verb} "
                            f"{what} needs {need.role.label} or above")
        if self.is_admin and team not in self.roles and need.scope == "read":
            note_team_read(team)  # an administrator reading another team's object

    def can(self, need: Need, team: str | None) -> bool:
        role = self.role_in(team)
        return role is not None and role >= need.role and need.scope in self.scopes

    def _check_scope(self, need: Need, what: str) -> None:
        if need.scope not in self.scopes:
            raise Forbidden(f"this token lacks the {need.scope!r} scope needed to "
                            f"{need.verb} {what}")

    def require_scopes(self, scopes: tuple[str, ...], what: str) -> None:
        """Refuse unless the token holds every one of ``scopes`` (routes check this before
        they change anything, so a refusal never follows a write)."""
        for scope in scopes:
            if scope not in self.scopes:
                raise Forbidden(f"this token lacks the {scope!r} scope needed to {what} "
                                f"(it needs {' and '.join(map(repr, scopes))})")

    @property
    def is_system_admin(self) -> bool:
        """A system administrator's unrestricted token: no team restriction, not a job's,
        with the ``admin`` scope (what :meth:`require_admin` lets through)."""
        return (self.is_admin and self.job_id is None and self.team is None
                and "admin" in self.scopes)

    def readable_teams(self) -> set[str] | None:
        """The teams whose resources this principal may list; None means every team."""
        if "read" not in self.scopes:
            return set()
        if self.is_admin and self.team is None:
            # A list of every team: noted as reading all of them (ALL_TEAMS), since which
            # teams the returned rows belong to is not known here (see ``check``).
            note_team_read(ALL_TEAMS)
            return None
        if self.team is not None:
            return {self.team} if self.role_in(self.team) else set()
        return set(self.roles)

    def require_admin(self, what: str) -> None:
        """System administration: users, teams, quotas, keys, the audit log."""
        if not self.is_admin or self.job_id is not None or self.team is not None:
            raise Forbidden(f"{what} needs a system administrator")
        self._check_scope(Need(Role.ADMIN, "admin", "do"), what)
        note_admin(what)  # every use of administrator power is audited, reads too

    def home_team(self, team: str | None, need: Need = CREATE, what: str = "it") -> str:
        """The team a new resource goes to: ``team`` when given, else the token's team,
        else the principal's only (or first) team; checks ``need`` there."""
        if team is None:
            team = self.team or self.home or _first(self.roles)
            if team is None:
                raise Forbidden(f"{self.name} belongs to no team; ask an administrator to add "
                                "you to one (llmos teams add TEAM USER --role developer)")
        if self.role_in(team) is None:
            raise Forbidden(f"{self.name} is not a member of team {team}")
        self.check(need, team, f"{what} in team {team}")
        return team


def _first(roles: dict[str, Role]) -> str | None:
    if not roles:
        return None
    # The team where the principal holds the highest role; ties by name, so it is stable.
    return sorted(roles, key=lambda t: (-roles[t], t))[0]


# The daemon itself and in-process callers (tests, the control loop): every right.
SYSTEM = Principal(name="system", user_id=None, is_admin=True)
