"""The tables of who may do what (``security/``): users, teams and their members, API
tokens, the hash-chained audit log and the encryption keys' checks. Part of the one schema
of :mod:`llmos.store.models`, which re-exports them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from llmos.store.base import Base, UTCDateTime, utcnow


class AuditRecord(Base):
    """One entry of the append-only, hash-chained audit log (``security/audit.py``)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(200))
    target: Mapped[str] = mapped_column(String(500))
    outcome: Mapped[str] = mapped_column(String(50))
    request_id: Mapped[str] = mapped_column(String(100))
    detail: Mapped[dict] = mapped_column(JSON)
    # Unique: two writers that read the same head cannot both extend it (the chain
    # cannot fork; the loser retries on the new head).
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The newest audit record's hash and the number written (one row, id 1)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(BigInteger)


class KeyCheck(Base):
    """A check value per key id (``security/crypto.py``): an HMAC of a constant under the
    key, so a wrong key for a known id is refused instead of sealing data no one can open
    once the right key returns. The keys themselves never enter the database."""

    __tablename__ = "key_checks"

    key_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    check_value: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# -- identities (security/identity.py, security/tokens.py) ---------------------------------


class User(Base):
    """A person or a service account. ``is_admin``: administrator of the whole system."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="user", cascade="all, delete-orphan")


class Team(Base):
    """Every resource belongs to a team; the team's quotas bound what its jobs hold."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Quotas; None means unlimited.
    quota_cpu: Mapped[float | None] = mapped_column(Float)
    quota_memory_mb: Mapped[int | None] = mapped_column(Integer)
    quota_gpu: Mapped[int | None] = mapped_column(Integer)
    quota_jobs: Mapped[int | None] = mapped_column(Integer)  # concurrent running jobs
    quota_rps: Mapped[float | None] = mapped_column(Float)  # serving requests per second

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="team", cascade="all, delete-orphan")


class Membership(Base):
    """A user's role in a team: viewer, developer, maintainer or admin."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"),
                                         primary_key=True)
    role: Mapped[str] = mapped_column(String(20))

    user: Mapped[User] = relationship(back_populates="memberships")
    team: Mapped[Team] = relationship(back_populates="memberships")


class ApiToken(Base):
    """An API token: only its sha256 is stored, with a short prefix to recognise it."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(20))
    hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list] = mapped_column(JSON)
    # The token acts only in this team (job tokens, team-bound service tokens); None: all
    # of its user's teams.
    team: Mapped[str | None] = mapped_column(String(100))
    # Serving: the tenant's priority class and request-rate limit (None: unlimited).
    priority: Mapped[str] = mapped_column(String(16), default="normal")
    rate_limit_rps: Mapped[float | None] = mapped_column(Float)
    # A job's own token (minted when it starts, dead once it ends).
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                               index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    user: Mapped[User] = relationship()
