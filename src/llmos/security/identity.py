"""Users, teams, memberships and team quotas; and the first start's administrator.

The first start of a store creates the user ``admin`` (a system administrator), the team
``default`` with admin as its admin, and one token that is printed once — there is no
default password, and no way in without a token. Users are created by a system
administrator (who receives the new user's first token); team admins add and remove
members of their team.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from llmos.errors import Conflict, InvalidRequest, NotFound
from llmos.security.rbac import ADMINISTER, READ, Principal, Role
from llmos.security.tokens import TokenService
from llmos.store.db import Database
from llmos.store.models import Membership, Team, User

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,62}$")
ADMIN_USER = "admin"
DEFAULT_TEAM = "default"
QUOTA_FIELDS = ("cpu", "memory_mb", "gpu", "jobs", "rps")


def check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidRequest(f"bad {kind} name {name!r}: lower-case letters, digits, '_', '.' "
                             "and '-', starting with a letter, at most 63")
    return name


@dataclass
class Bootstrap:
    """What the first start created (the token is shown once)."""

    user: str
    team: str
    token: str


class IdentityService:
    def __init__(self, db: Database, tokens: TokenService,
                 on_quota_change: Callable[[], None] | None = None):
        self.db = db
        self.tokens = tokens
        self.on_quota_change = on_quota_change

    def bootstrap(self) -> Bootstrap | None:
        """On an empty store: the administrator, the default team and a first token."""
        with self.db.session() as s:
            if s.scalar(select(func.count()).select_from(User)):
                return None
            admin = User(name=ADMIN_USER, is_admin=True, disabled=False)
            team = Team(name=DEFAULT_TEAM)
            s.add_all([admin, team])
            s.flush()
            s.add(Membership(user_id=admin.id, team_id=team.id, role=Role.ADMIN.label))
            admin_id = admin.id
        principal = Principal(name=ADMIN_USER, user_id=admin_id, is_admin=True)
        _, secret = self.tokens.create(principal, name="first admin token")
        return Bootstrap(ADMIN_USER, DEFAULT_TEAM, secret)

    # -- users ----------------------------------------------------------------------------

    def create_user(self, principal: Principal, name: str, is_admin: bool = False,
                    team: str | None = None, role: str = "developer") -> tuple[User, str]:
        """A new user (optionally in a team) and their first token, shown once."""
        principal.require_admin("creating users")
        check_name("user", name)
        with self.db.session() as s:
            if s.scalars(select(User).where(User.name == name)).first():
                raise Conflict(f"user {name} already exists")
            user = User(name=name, is_admin=is_admin, disabled=False)
            s.add(user)
            s.flush()
            if team is not None:
                s.add(Membership(user_id=user.id, team_id=self._team(s, team).id,
                                 role=Role.parse(role).label))
        _, secret = self.tokens.create(principal, user=name, name="first token")
        self.tokens.invalidate()
        return self.user(principal, name), secret

    def user(self, principal: Principal, name: str) -> User:
        if name != principal.name:
            principal.require_admin(f"reading user {name}")
        with self.db.session() as s:
            user = s.scalars(select(User).where(User.name == name).options(
                selectinload(User.memberships).selectinload(Membership.team))).first()
            if user is None:
                raise NotFound(f"user {name} not found")
            return user

    def users(self, principal: Principal) -> list[User]:
        principal.require_admin("listing users")
        with self.db.session() as s:
            return list(s.scalars(select(User).options(
                selectinload(User.memberships).selectinload(Membership.team))
                .order_by(User.name)))

    def set_disabled(self, principal: Principal, name: str, disabled: bool) -> User:
        principal.require_admin("disabling users")
        if name == principal.name and disabled:
            raise Conflict("you cannot disable yourself")
        with self.db.session() as s:
            user = s.scalars(select(User).where(User.name == name)).first()
            if user is None:
                raise NotFound(f"user {name} not found")
            user.disabled = disabled
        self.tokens.invalidate()
        return self.user(principal, name)

    # -- teams ----------------------------------------------------------------------------

    def create_team(self, principal: Principal, name: str) -> Team:
        principal.require_admin("creating teams")
        check_name("team", name)
        with self.db.session() as s:
            if s.scalars(select(Team).where(Team.name == name)).first():
                raise Conflict(f"team {name} already exists")
            s.add(Team(name=name))
        return self._changed(name)

    def team(self, principal: Principal, name: str) -> Team:
        principal.check(READ, name, f"team {name}")
        with self.db.session() as s:
            return self._team(s, name, members=True)

    def teams(self, principal: Principal) -> list[Team]:
        visible = principal.readable_teams()
        q = select(Team).options(selectinload(Team.memberships).selectinload(Membership.user))
        if visible is not None:
            q = q.where(Team.name.in_(sorted(visible)))
        with self.db.session() as s:
            return list(s.scalars(q.order_by(Team.name)))

    def set_member(self, principal: Principal, team: str, user: str, role: str) -> Team:
        """Add ``user`` to ``team`` with ``role``, or change their role (team admins and
        system administrators)."""
        principal.check(ADMINISTER, team, f"team {team}")
        level = Role.parse(role)
        with self.db.session() as s:
            t = self._team(s, team)
            u = s.scalars(select(User).where(User.name == user)).first()
            if u is None:
                raise NotFound(f"user {user} not found")
            m = s.get(Membership, (u.id, t.id))
            if m is None:
                s.add(Membership(user_id=u.id, team_id=t.id, role=level.label))
            else:
                m.role = level.label
        self.tokens.invalidate()
        return self._changed(team)

    def remove_member(self, principal: Principal, team: str, user: str) -> Team:
        principal.check(ADMINISTER, team, f"team {team}")
        with self.db.session() as s:
            t = self._team(s, team)
            u = s.scalars(select(User).where(User.name == user)).first()
            m = s.get(Membership, (u.id, t.id)) if u else None
            if m is None:
                raise NotFound(f"user {user} is not a member of team {team}")
            s.delete(m)
        self.tokens.invalidate()
        return self._changed(team)

    def set_quota(self, principal: Principal, team: str, **limits: float | None) -> Team:
        """Set (a number) or lift (None) the team's quotas: cpu, memory_mb, gpu, jobs, rps."""
        principal.require_admin("setting quotas")
        unknown = set(limits) - set(QUOTA_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown quota {sorted(unknown)[0]!r}; quotas: "
                                 f"{', '.join(QUOTA_FIELDS)}")
        with self.db.session() as s:
            t = self._team(s, team)
            for key, value in limits.items():
                if value is not None and value < 0:
                    raise InvalidRequest(f"quota {key} cannot be negative")
                setattr(t, f"quota_{key}", value)
        if self.on_quota_change:
            self.on_quota_change()
        return self._changed(team)

    def _changed(self, name: str) -> Team:
        """The team an administrator just changed, for the answer: administering a team
        (checked before the change) shows it, so an ``admin``-scoped token without
        ``read`` is never refused after its change was made."""
        with self.db.session() as s:
            return self._team(s, name, members=True)

    @staticmethod
    def _team(s, name: str, members: bool = False) -> Team:
        q = select(Team).where(Team.name == name)
        if members:
            q = q.options(selectinload(Team.memberships).selectinload(Membership.user))
        team = s.scalars(q).first()
        if team is None:
            raise NotFound(f"team {name} not found")
        return team


def quotas_of(team: Team) -> dict[str, float | None]:
    return {key: getattr(team, f"quota_{key}") for key in QUOTA_FIELDS}


def serving_rates(db: Database) -> dict[str, float | None]:
    """Every team's serving quota in requests per second (None: no limit)."""
    with db.session() as s:
        return {t.name: t.quota_rps for t in s.scalars(select(Team))}
