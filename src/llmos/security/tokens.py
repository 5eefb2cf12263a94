"""API tokens: 256 random bits, stored only as their sha256, with scopes, expiry and
revocation; and turning a presented token into a :class:`Principal`.

A token looks like ``llmos_<43 url-safe characters>``; its first 12 characters (the
prefix) are kept in clear so a person can recognise it in a list. Since a token is 256
random bits, a plain sha256 is all the storage needs: there is nothing to guess.

A job gets a token of its own when it starts (owner's identity, the job's team, at most
developer); it stops working as soon as the job is no longer running.

A token is *confined*: it can only mint tokens that are no wider than itself — a subset
of its scopes, its own team restriction, an expiry no later than its own (one with an
expiry cannot mint one without), a priority no higher and a rate limit no looser — and
managing tokens needs the ``write`` (or ``admin``) scope. A job's token mints nothing.
Authentication is cached for a few seconds, but never past a token's expiry, and every
change to users, memberships or tokens clears the cache, so a revocation or a disabled
user takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from llmos.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from llmos.security.rbac import SCOPES, Principal, Role
from llmos.store.db import Database
from llmos.store.models import ApiToken, Job, Membership, User, utcnow

TOKEN_PREFIX = "llmos_"
SHOWN = 12  # characters of a token kept in clear
CACHE_S = 5.0  # how long an authenticated token is remembered (changes clear it at once)
CACHE_MAX = 10_000
LAST_USED_EVERY_S = 60.0
PRIORITIES = ("high", "normal", "low")
RANK = {"low": 0, "normal": 1, "high": 2}
MANAGING = ("write", "admin")  # either scope lets a token manage tokens
LIVE_JOB_STATES = ("SCHEDULED", "RUNNING")


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    def __init__(self, db: Database):
        self.db = db
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._used: dict[int, float] = {}
        self._lock = threading.Lock()

    # -- authentication ------------------------------------------------------------------

    def authenticate(self, token: str) -> Principal:
        """The principal a presented token stands for, or Unauthorized. A cached principal
        is used only until its token's expiry: expiry is checked on every request."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise Unauthorized("invalid token")
        key = digest(token)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and hit[1] > now and not _expired(hit[0]):
            principal = hit[0]
        else:
            principal = self._load(key)
            if principal.job_id is None:  # a job's token dies with the job: check each time
                with self._lock:
                    if len(self._cache) >= CACHE_MAX:
                        self._cache.clear()
                    self._cache[key] = (principal, now + CACHE_S)
        self._touch(principal.token_id, now)
        return principal

    def _load(self, key: str) -> Principal:
        with self.db.session() as s:
            tok = s.scalars(select(ApiToken).where(ApiToken.hash == key).options(
                selectinload(ApiToken.user).selectinload(User.memberships)
                .selectinload(Membership.team))).first()
            if tok is None:
                raise Unauthorized("invalid token")
            if tok.revoked_at is not None:
                raise Unauthorized(f"token {tok.prefix}… was revoked")
            if tok.expires_at is not None and tok.expires_at <= utcnow():
                raise Unauthorized(f"token {tok.prefix}… expired at {tok.expires_at:%Y-%m-%d %H:%M} UTC")
            if tok.user.disabled:
                raise Unauthorized(f"user {tok.user.name} is disabled")
            roles = {m.team.name: Role.parse(m.role) for m in tok.user.memberships}
            is_admin = tok.user.is_admin
            team, home = tok.team, None
            if tok.job_id is not None:
                job = s.get(Job, tok.job_id)
                if job is None or job.state not in LIVE_JOB_STATES:
                    raise Unauthorized(f"token {tok.prefix}… belonged to a job that is no "
                                       "longer running")
                roles, is_admin = _job_roles(roles, is_admin, tok.team), False
                team, home = None, tok.team
            return Principal(name=tok.user.name, user_id=tok.user_id, is_admin=is_admin,
                             roles=roles, scopes=frozenset(tok.scopes), team=team, home=home,
                             job_id=tok.job_id, token_id=tok.id, token_prefix=tok.prefix,
                             priority=tok.priority, rate_limit_rps=tok.rate_limit_rps,
                             expires_at=tok.expires_at)

    def _touch(self, token_id: int | None, now: float) -> None:
        if token_id is None or now - self._used.get(token_id, -1e9) < LAST_USED_EVERY_S:
            return
        self._used[token_id] = now
        with self.db.session() as s:
            s.execute(update(ApiToken).where(ApiToken.id == token_id)
                      .values(last_used_at=utcnow()))

    def principal_of_user(self, name: str, team: str | None,
                          system_admin: bool = False) -> Principal:
        """The user ``name`` as they are now (roles, administrator), acting in ``team``:
        how work started on their behalf without a token (a pipeline's steps, its
        triggered runs) is checked. ``system_admin``: it was started with a system
        administrator's unrestricted token, and keeps that reach while the user is still
        an administrator; otherwise it is confined to ``team``, without the admin scope.
        A user gone or disabled may start nothing."""
        with self.db.session() as s:
            user = s.scalars(select(User).where(User.name == name).options(
                selectinload(User.memberships).selectinload(Membership.team))).first()
            if user is None or user.disabled:
                raise Forbidden(f"user {name} is {'disabled' if user else 'gone'}")
            roles = {m.team.name: Role.parse(m.role) for m in user.memberships}
            if system_admin and user.is_admin:
                return Principal(name=user.name, user_id=user.id, is_admin=True, roles=roles,
                                 home=team)
            return Principal(name=user.name, user_id=user.id, is_admin=user.is_admin,
                             roles=roles, team=team, home=team,
                             scopes=frozenset(("read", "write", "inference")))

    def invalidate(self) -> None:
        """Forget cached principals (after any change to users, teams or tokens)."""
        with self._lock:
            self._cache.clear()

    # -- management -------------------------------------------------------------------

    def create(self, principal: Principal, *, user: str | None = None, name: str = "token",
               scopes: list[str] | None = None, expires_in_days: float | None = None,
               team: str | None = None, priority: str = "normal",
               rate_limit_rps: float | None = None) -> tuple[ApiToken, str]:
        """A new token for ``user`` (default: the caller), confined to what the caller's
        own token may do (see the module). Returns the row and the secret, which is shown
        this once and never stored. Defaults: the caller's scopes, team restriction, expiry
        and rate limit."""
        if principal.job_id is not None:
            raise Forbidden("a job's token cannot create tokens")
        _require_managing(principal, "create tokens")
        wanted = list(dict.fromkeys(scopes or [s for s in SCOPES if s in principal.scopes]))
        bad = [s for s in wanted if s not in SCOPES]
        if bad:
            raise InvalidRequest(f"unknown scope {bad[0]!r}; scopes: {', '.join(SCOPES)}")
        beyond = [s for s in wanted if s not in principal.scopes]
        if beyond:
            raise Forbidden(f"a token cannot grant scopes its creator's token lacks: "
                            f"{', '.join(beyond)}")
        if priority not in PRIORITIES:
            raise InvalidRequest(f"priority must be one of {', '.join(PRIORITIES)}")
        if expires_in_days is not None and not 0 < expires_in_days <= 3650:
            raise InvalidRequest("expires_in_days is between 0 and 3650")
        team = _confined_team(principal, team)
        expires = _confined_expiry(principal, expires_in_days)
        rate_limit_rps = _confined_rate(principal, rate_limit_rps)
        if RANK[priority] > RANK[principal.priority] and not principal.is_system_admin:
            raise Forbidden(f"this token has priority {principal.priority}; it cannot create "
                            f"a token of a higher priority ({priority})")
        with self.db.session() as s:
            owner = self._user(s, principal, user)
            if team is not None and not (owner.is_admin or any(
                    m.team.name == team for m in owner.memberships)):
                raise InvalidRequest(f"user {owner.name} is not a member of team {team}")
            secret = new_secret()
            row = ApiToken(user_id=owner.id, name=name, prefix=secret[:SHOWN],
                           hash=digest(secret), scopes=wanted, team=team, priority=priority,
                           rate_limit_rps=rate_limit_rps, expires_at=expires,
                           created_at=utcnow())
            s.add(row)
            s.flush()
            s.refresh(row, ["user"])
        return row, secret

    def _user(self, s, principal: Principal, name: str | None) -> User:
        if name is None or name == principal.name:
            user = s.get(User, principal.user_id) if principal.user_id else None
        else:
            principal.require_admin(f"tokens for user {name}")
            user = s.scalars(select(User).where(User.name == name)).first()
        if user is None:
            raise NotFound(f"user {name or principal.name} not found")
        s.refresh(user, ["memberships"])
        return user

    def list(self, principal: Principal, user: str | None = None,
             include_revoked: bool = False) -> list[ApiToken]:
        """The caller's tokens (a system administrator's unrestricted token: anyone's)."""
        if not {"read", "admin"} & principal.scopes:
            raise Forbidden("listing tokens needs the 'read' or 'admin' scope")
        q = select(ApiToken).where(ApiToken.job_id.is_(None)).options(
            selectinload(ApiToken.user)).order_by(ApiToken.id)
        with self.db.session() as s:
            if user is not None or not principal.is_system_admin:
                q = q.where(ApiToken.user_id == self._user(s, principal, user).id)
            if not include_revoked:
                q = q.where(ApiToken.revoked_at.is_(None))
            return list(s.scalars(q))

    def revoke(self, principal: Principal, token_id: int) -> ApiToken:
        """Revoke a token of the caller's (a system administrator: anyone's); it stops
        working on the next request. A token may always revoke itself; revoking another
        needs the ``write`` or ``admin`` scope."""
        if principal.job_id is not None:
            raise Forbidden("a job's token cannot revoke tokens")
        with self.db.session() as s:
            tok = s.get(ApiToken, token_id)
            if tok is None or tok.job_id is not None or (
                    tok.user_id != principal.user_id and not principal.is_system_admin):
                raise NotFound(f"token {token_id} not found")
            if tok.id != principal.token_id:
                _require_managing(principal, "revoke tokens")
            if tok.user_id != principal.user_id:
                principal.require_admin(f"revoking token {token_id}")
            if tok.revoked_at is None:
                tok.revoked_at = utcnow()
            s.flush()
            s.refresh(tok, ["user"])
        self.invalidate()
        return tok

    # -- jobs -----------------------------------------------------------------------------

    def mint_for_job(self, job_id: int) -> str:
        """A token for a starting job: its owner, its team, read and write, dead when the
        job stops running."""
        with self.db.session() as s:
            job = s.get(Job, job_id)
            owner = s.scalars(select(User).where(User.name == job.owner)).first()
            if owner is None:
                raise NotFound(f"job {job_id}'s owner {job.owner!r} is not a user")
            s.execute(update(ApiToken).where(ApiToken.job_id == job_id,
                                             ApiToken.revoked_at.is_(None))
                      .values(revoked_at=utcnow()))
            secret = new_secret()
            s.add(ApiToken(user_id=owner.id, name=f"job {job_id}", prefix=secret[:SHOWN],
                           hash=digest(secret), scopes=["read", "write"], team=job.team,
                           priority=job.priority, job_id=job_id, created_at=utcnow()))
        return secret


def _expired(principal: Principal) -> bool:
    return principal.expires_at is not None and principal.expires_at <= utcnow()


def _require_managing(principal: Principal, what: str) -> None:
    if not set(MANAGING) & principal.scopes:
        raise Forbidden(f"this token lacks the 'write' (or 'admin') scope needed to {what}")


def _confined_team(principal: Principal, team: str | None) -> str | None:
    """A token restricted to a team mints only tokens restricted to that same team."""
    if principal.team is None:
        return team
    if team is not None and team != principal.team:
        raise Forbidden(f"this token acts only in team {principal.team}; it cannot create a "
                        f"token for team {team}")
    return principal.team


def _confined_expiry(principal: Principal, days: float | None) -> datetime | None:
    """The new token's expiry: ``days`` from now, never later than the caller's own token
    (a token with an expiry cannot mint one without; by default it inherits it)."""
    limit = principal.expires_at
    return _within(limit, utcnow() + timedelta(days=days) if days else None,
                   lambda: f"this token expires at {limit:%Y-%m-%d %H:%M:%S} UTC; it cannot "
                   "create a token that outlives it")


def _confined_rate(principal: Principal, rps: float | None) -> float | None:
    """A rate-limited token mints only tokens limited as tightly (by default, the same)."""
    limit = principal.rate_limit_rps
    return _within(limit, rps, lambda: f"this token is limited to {limit:g} requests per "
                   f"second; it cannot create a token allowed {rps:g}")


def _within(limit, asked, refusal):
    """``asked`` (None: as much as ``limit``) where it does not exceed ``limit`` (None: no
    limit); beyond it, Forbidden with ``refusal()``."""
    if limit is None:
        return asked
    if asked is None:
        return limit
    if asked > limit:
        raise Forbidden(refusal())
    return asked


def _job_roles(owner_roles: dict[str, Role], owner_is_admin: bool, team: str | None
               ) -> dict[str, Role]:
    """A job acts in its own team only, as a developer at most — whatever its owner may
    do in other teams: a job is code run for one team, and its token must not carry the
    owner's reach into the others."""
    own = owner_roles.get(team, Role.ADMIN if owner_is_admin else None)
    if team is None or own is None:
        return {}
    return {team: min(own, Role.DEVELOPER)}
