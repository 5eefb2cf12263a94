"""/v1/audit (list, verify), and the middleware that records every state-changing request.

Every POST, PUT, PATCH and DELETE is recorded — refused ones too — with its route, target
(the path), outcome (the status code) and a request id that is also returned as
``X-Request-ID``; the record is committed before the response is sent. Until identities exist (security issue) the actor is
the client's address.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from llmos.api.schemas import ErrorResponse
from llmos.security.audit import AuditLog
from llmos.store.models import AuditRecord

router = APIRouter(prefix="/v1/audit", tags=["audit"])
ERRORS = {s: {"model": ErrorResponse} for s in (400, 404, 422)}
WRITES = {"POST", "PUT", "PATCH", "DELETE"}


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
def list_records(request: Request,
                 actor: str | None = Query(default=None, max_length=200),
                 action: str | None = Query(default=None, max_length=200),
                 target: str | None = Query(default=None, max_length=500),
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = Query(default=100, ge=1, le=10_000)) -> AuditList:
    """Audit records, newest first, filtered by actor, action, target and time."""
    return AuditList(records=[AuditOut.of(r) for r in _audit(request).list(
        actor, action, target, since, until, limit)])


@router.get("/verify", response_model=VerifyOut, responses=ERRORS)
def verify(request: Request) -> VerifyOut:
    """Check the whole hash chain; names the first record changed, removed or reordered."""
    v = _audit(request).verify()
    return VerifyOut(ok=v.ok, records=v.records, first_bad=v.first_bad, message=v.message)


def install(app: FastAPI) -> None:
    app.add_middleware(RecordWrites)


class RecordWrites:
    """Pure ASGI middleware (request and response bodies stream through untouched)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        recorded = False

        async def record(status: int) -> None:
            # Written before the response leaves: a client that has its answer finds the
            # record.
            nonlocal recorded
            recorded = True
            if scope["method"] not in WRITES:
                return
            route = scope.get("route")
            template = getattr(route, "path", None) or "(no such route)"
            client = scope.get("client") or ("unknown", 0)
            await run_in_threadpool(
                scope["app"].state.audit.append, f"anonymous@{client[0]}",
                f"{scope['method']} {template}", scope["path"], str(status), request_id)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                await record(message["status"])
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if not recorded:  # the app raised before answering
                await record(500)
