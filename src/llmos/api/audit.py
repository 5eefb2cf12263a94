"""/v1/audit: list and verify the audit log (system administrators). The records are
written by the gate (``api/gate.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from llmos.api.gate import current
from llmos.api.schemas import ERRORS
from llmos.schema import IsoTime
from llmos.security.audit import AuditLog
from llmos.security.rbac import Principal
from llmos.store.models import AuditRecord

router = APIRouter(prefix="/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    outcome: str
    request_id: str
    detail: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, r: AuditRecord) -> AuditOut:
        return cls(id=r.id, at=r.at, actor=r.actor, action=r.action, target=r.target,
                   outcome=r.outcome, request_id=r.request_id, detail=r.detail, hash=r.hash)


class AuditList(BaseModel):
    records: list[AuditOut]


class VerifyOut(BaseModel):
    ok: bool
    records: int
    first_bad: int | None
    message: str


def _audit(request: Request) -> AuditLog:
    return request.app.state.audit


@router.get("", response_model=AuditList, responses=ERRORS)
def list_records(request: Request, who: Principal = Depends(current),
                 actor: str | None = Query(default=None, max_length=200),
                 action: str | None = Query(default=None, max_length=200),
                 target: str | None = Query(default=None, max_length=500),
                 since: IsoTime | None = None, until: IsoTime | None = None,
                 limit: int = Query(default=100, ge=1, le=10_000)) -> AuditList:
    """Audit records, newest first, filtered by actor, action, target and time."""
    return AuditList(records=[AuditOut.of(r) for r in _audit(request).list(
        who, actor, action, target, since, until, limit)])


@router.get("/verify", response_model=VerifyOut, responses=ERRORS)
def verify(request: Request, who: Principal = Depends(current)) -> VerifyOut:
    """Check the whole hash chain; names the first record changed, removed or reordered."""
    v = _audit(request).verify(who)
    return VerifyOut(ok=v.ok, records=v.records, first_bad=v.first_bad, message=v.message)
