"""/v1/auth/whoami, /v1/users, /v1/teams, /v1/tokens: identities, roles, quotas, tokens.

Thin: validate, hand the principal to the identity and token services (which decide what
it may do), shape the answer. A token's secret appears in exactly one response — the one
that created it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from pydantic import BaseModel, Field

from llmos.api.gate import current
from llmos.api.schemas import ERRORS
from llmos.schema import RequestBody
from llmos.security.identity import IdentityService, quotas_of
from llmos.security.rbac import ROLES, SCOPES, Principal
from llmos.security.tokens import TokenService
from llmos.store.models import ApiToken, Team, User

Who = Depends(current)


def _name() -> str:
    return PathParam(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9_.-]*$")


NamePath = _name()
UserPath = _name()
RoleName = Literal["viewer", "developer", "maintainer", "admin"]
Scope = Literal["read", "write", "inference", "admin"]
Priority = Literal["high", "normal", "low"]
assert set(RoleName.__args__) == set(ROLES) and set(Scope.__args__) == set(SCOPES)

auth_router = APIRouter(prefix="/v1/auth", tags=["identity"])
users_router = APIRouter(prefix="/v1/users", tags=["identity"])
teams_router = APIRouter(prefix="/v1/teams", tags=["identity"])
tokens_router = APIRouter(prefix="/v1/tokens", tags=["identity"])


def _identity(request: Request) -> IdentityService:
    return request.app.state.identity


def _tokens(request: Request) -> TokenService:
    return request.app.state.tokens


# -- shapes --------------------------------------------------------------------------------


class WhoAmI(BaseModel):
    name: str
    is_admin: bool
    roles: dict[str, str]
    scopes: list[str]
    team: str | None
    job_id: int | None
    token_prefix: str | None
    priority: str
    rate_limit_rps: float | None


class UserOut(BaseModel):
    name: str
    is_admin: bool
    disabled: bool
    roles: dict[str, str]
    created_at: datetime

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(name=u.name, is_admin=u.is_admin, disabled=u.disabled,
                   roles={m.team.name: m.role for m in u.memberships}, created_at=u.created_at)


class UserCreated(BaseModel):
    user: UserOut
    token: str = Field(description="The new user's first API token; shown this once.")


class UserList(BaseModel):
    users: list[UserOut]


class NewUser(RequestBody):
    name: str = Field(min_length=1, max_length=63)
    admin: bool = False
    team: str | None = Field(default=None, min_length=1, max_length=63)
    role: RoleName = "developer"


class Quotas(RequestBody):
    cpu: float | None = Field(default=None, ge=0, le=1e6)
    memory_mb: int | None = Field(default=None, ge=0, le=2**31 - 1)
    gpu: int | None = Field(default=None, ge=0, le=1_000_000)
    jobs: int | None = Field(default=None, ge=0, le=1_000_000)
    rps: float | None = Field(default=None, ge=0, le=1e6)


class TeamOut(BaseModel):
    name: str
    members: dict[str, str]
    quotas: Quotas
    created_at: datetime

    @classmethod
    def of(cls, t: Team) -> TeamOut:
        return cls(name=t.name, members={m.user.name: m.role for m in t.memberships},
                   quotas=Quotas(**quotas_of(t)), created_at=t.created_at)


class TeamList(BaseModel):
    teams: list[TeamOut]


class NewTeam(RequestBody):
    name: str = Field(min_length=1, max_length=63)


class MemberIn(RequestBody):
    role: RoleName


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    scopes: list[str]
    team: str | None
    priority: str
    rate_limit_rps: float | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, t: ApiToken) -> TokenOut:
        return cls(id=t.id, user=t.user.name, name=t.name, prefix=t.prefix, scopes=t.scopes,
                   team=t.team, priority=t.priority, rate_limit_rps=t.rate_limit_rps,
                   created_at=t.created_at, expires_at=t.expires_at, revoked_at=t.revoked_at,
                   last_used_at=t.last_used_at)


class TokenCreated(TokenOut):
    token: str = Field(description="The secret; shown this once, stored only as a hash.")


class TokenList(BaseModel):
    tokens: list[TokenOut]


class NewToken(RequestBody):
    name: str = Field(default="token", min_length=1, max_length=100)
    user: str | None = Field(default=None, min_length=1, max_length=63,
                             description="Whose token (administrators); default: yours.")
    scopes: list[Scope] | None = Field(default=None, max_length=4,
                                       description="Default: every scope your token has.")
    expires_in_days: float | None = Field(
        default=None, gt=0, le=3650,
        description="Default: never, or your token's own expiry when it has one.")
    team: str | None = Field(default=None, min_length=1, max_length=63,
                             description="Act only in this team (default: your token's).")
    priority: Priority = Field(default="normal", description="Serving priority class.")
    rate_limit_rps: float | None = Field(default=None, gt=0, le=1e6,
                                         description="Serving requests per second.")


# -- routes --------------------------------------------------------------------------------


@auth_router.get("/whoami", response_model=WhoAmI, responses=ERRORS)
def whoami(who: Principal = Who) -> WhoAmI:
    """Who the presented token stands for, with its roles and scopes."""
    return WhoAmI(name=who.name, is_admin=who.is_admin,
                  roles={t: r.label for t, r in sorted(who.roles.items())},
                  scopes=sorted(who.scopes), team=who.team or who.home, job_id=who.job_id,
                  token_prefix=who.token_prefix, priority=who.priority,
                  rate_limit_rps=who.rate_limit_rps)


@users_router.post("", response_model=UserCreated, status_code=201, responses=ERRORS)
def create_user(body: NewUser, request: Request, who: Principal = Who) -> UserCreated:
    """A new user, optionally in a team, and their first token (system administrators)."""
    user, token = _identity(request).create_user(who, body.name, body.admin, body.team,
                                                 body.role)
    return UserCreated(user=UserOut.of(user), token=token)


@users_router.get("", response_model=UserList, responses=ERRORS)
def list_users(request: Request, who: Principal = Who) -> UserList:
    """Every user (system administrators)."""
    return UserList(users=[UserOut.of(u) for u in _identity(request).users(who)])


@users_router.get("/{name}", response_model=UserOut, responses=ERRORS)
def get_user(request: Request, name: str = NamePath, who: Principal = Who) -> UserOut:
    """A user and their roles (yourself, or anyone for system administrators)."""
    return UserOut.of(_identity(request).user(who, name))


@users_router.post("/{name}/disable", response_model=UserOut, responses=ERRORS)
def disable_user(request: Request, name: str = NamePath, who: Principal = Who) -> UserOut:
    """Disable a user: every token of theirs stops working at once."""
    return UserOut.of(_identity(request).set_disabled(who, name, True))


@users_router.post("/{name}/enable", response_model=UserOut, responses=ERRORS)
def enable_user(request: Request, name: str = NamePath, who: Principal = Who) -> UserOut:
    return UserOut.of(_identity(request).set_disabled(who, name, False))


@teams_router.post("", response_model=TeamOut, status_code=201, responses=ERRORS)
def create_team(body: NewTeam, request: Request, who: Principal = Who) -> TeamOut:
    """A new team (system administrators)."""
    return TeamOut.of(_identity(request).create_team(who, body.name))


@teams_router.get("", response_model=TeamList, responses=ERRORS)
def list_teams(request: Request, who: Principal = Who) -> TeamList:
    """The teams you belong to (every team, for system administrators)."""
    return TeamList(teams=[TeamOut.of(t) for t in _identity(request).teams(who)])


@teams_router.get("/{name}", response_model=TeamOut, responses=ERRORS)
def get_team(request: Request, name: str = NamePath, who: Principal = Who) -> TeamOut:
    return TeamOut.of(_identity(request).team(who, name))


@teams_router.put("/{name}/members/{user}", response_model=TeamOut, responses=ERRORS)
def set_member(body: MemberIn, request: Request, name: str = NamePath,
               user: str = UserPath, who: Principal = Who) -> TeamOut:
    """Add a user to the team with a role, or change their role (team admins)."""
    return TeamOut.of(_identity(request).set_member(who, name, user, body.role))


@teams_router.delete("/{name}/members/{user}", response_model=TeamOut, responses=ERRORS)
def remove_member(request: Request, name: str = NamePath, user: str = UserPath,
                  who: Principal = Who) -> TeamOut:
    return TeamOut.of(_identity(request).remove_member(who, name, user))


@teams_router.put("/{name}/quota", response_model=TeamOut, responses=ERRORS)
def set_quota(body: Quotas, request: Request, name: str = NamePath,
              who: Principal = Who) -> TeamOut:
    """Set the team's quotas (absent or null: no limit) — system administrators."""
    return TeamOut.of(_identity(request).set_quota(who, name, **body.model_dump()))


@tokens_router.post("", response_model=TokenCreated, status_code=201, responses=ERRORS)
def create_token(body: NewToken, request: Request, who: Principal = Who) -> TokenCreated:
    """A new API token, never wider than the token asking (its scopes, team, expiry,
    priority and rate limit at most; needs ``write`` or ``admin``); its secret is in this
    response only."""
    row, secret = _tokens(request).create(
        who, user=body.user, name=body.name, scopes=body.scopes,
        expires_in_days=body.expires_in_days, team=body.team, priority=body.priority,
        rate_limit_rps=body.rate_limit_rps)
    return TokenCreated(**TokenOut.of(row).model_dump(), token=secret)


@tokens_router.get("", response_model=TokenList, responses=ERRORS)
def list_tokens(request: Request, who: Principal = Who,
                user: str | None = Query(default=None, min_length=1, max_length=63),
                all: bool = Query(default=False, description="Include revoked tokens.")
                ) -> TokenList:
    """Your tokens (administrators: anyone's, or everyone's)."""
    rows = _tokens(request).list(who, user, include_revoked=all)
    return TokenList(tokens=[TokenOut.of(t) for t in rows])


@tokens_router.delete("/{token_id:int}", response_model=TokenOut, responses=ERRORS)
def revoke_token(request: Request, token_id: int = PathParam(ge=1, le=2**31 - 1),
                 who: Principal = Who) -> TokenOut:
    """Revoke a token: it stops working on the next request (a token may revoke itself;
    others need ``write`` or ``admin``)."""
    return TokenOut.of(_tokens(request).revoke(who, token_id))
