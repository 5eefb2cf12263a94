"""The audit log: append-only, each record chained to the one before by sha256.

A record holds who did what to which target, when, with which request id and outcome.
Its ``hash`` is the sha256 of its canonical JSON *including the previous record's hash*,
so changing, removing or reordering any record breaks every hash after it; the hash of
the newest record is also kept in ``audit_head`` (updated in the same transaction), so
removing records from the end is caught too. ``verify`` names the first bad record.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from llmos.security.rbac import Principal
from llmos.store.db import Database
from llmos.store.models import AuditHead, AuditRecord, utcnow

GENESIS = "0" * 64


def record_hash(prev: str, at: datetime, actor: str, action: str, target: str,
                outcome: str, request_id: str, detail: dict | None) -> str:
    body = json.dumps({"prev": prev, "at": at.isoformat(), "actor": actor, "action": action,
                       "target": target, "outcome": outcome, "request_id": request_id,
                       "detail": detail or {}}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _hash_of(r: AuditRecord, prev: str) -> str:
    return record_hash(prev, r.at, r.actor, r.action, r.target, r.outcome, r.request_id,
                       r.detail)


class AuditLog:
    def __init__(self, db: Database):
        self.db = db

    def append(self, actor: str, action: str, target: str = "", outcome: str = "ok",
               request_id: str = "", detail: dict | None = None) -> AuditRecord:
        """Add a record at the end of the chain. Concurrent writers serialize on the head
        row (PostgreSQL) and on the unique ``prev_hash`` (everywhere): one that loses the
        race tries again on the new head, so the chain never forks and no record is
        dropped."""
        for attempt in range(50):
            try:
                return self._append(actor, action, target, outcome, request_id, detail)
            except (IntegrityError, OperationalError):
                if attempt == 49:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _append(self, actor: str, action: str, target: str, outcome: str, request_id: str,
                detail: dict | None) -> AuditRecord:
        at = utcnow()
        with self.db.session() as s:
            head = s.scalars(select(AuditHead).where(AuditHead.id == 1)
                             .with_for_update()).first()
            if head is None:
                head = AuditHead(id=1, hash=GENESIS, count=0)
                s.add(head)
                s.flush()
            digest = record_hash(head.hash, at, actor, action, target, outcome, request_id,
                                 detail)
            rec = AuditRecord(at=at, actor=actor[:200], action=action[:200],
                              target=target[:500], outcome=outcome[:50],
                              request_id=request_id[:100], detail=detail or {},
                              prev_hash=head.hash, hash=digest)
            s.add(rec)
            head.hash, head.count = digest, head.count + 1
            s.flush()
            return rec

    def list(self, who: Principal, actor: str | None = None, action: str | None = None,
             target: str | None = None, since: datetime | None = None,
             until: datetime | None = None, limit: int = 100) -> list[AuditRecord]:
        who.require_admin("reading the audit log")
        q = select(AuditRecord)
        if actor:
            q = q.where(AuditRecord.actor == actor)
        if action:
            q = q.where(AuditRecord.action.contains(action, autoescape=True))
        if target:
            q = q.where(AuditRecord.target.contains(target, autoescape=True))
        if since:
            q = q.where(AuditRecord.at >= since)
        if until:
            q = q.where(AuditRecord.at <= until)
        with self.db.session() as s:
            return list(s.scalars(q.order_by(AuditRecord.id.desc()).limit(limit)))

    def verify(self, who: Principal) -> Verdict:
        """Walk the chain from the first record; the first record whose stored links or
        hash do not match what its content implies is named."""
        who.require_admin("verifying the audit log")
        prev = GENESIS
        checked = 0
        with self.db.session() as s:
            head = s.get(AuditHead, 1)
            for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.id)
                                 .execution_options(yield_per=1000)):
                if rec.prev_hash != prev:
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} does not follow the record before it "
                                   "(a record was removed, inserted or reordered)")
                if _hash_of(rec, prev) != rec.hash:
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} was changed after it was written")
                prev = rec.hash
                checked += 1
            written = head.count if head else 0
            if prev != (head.hash if head else GENESIS) or written != checked:
                return Verdict(False, checked, None,
                               f"the log ends after {checked} records but {written} were "
                               "written: records were removed from its end")
        return Verdict(True, checked, None, f"{checked} records, chain intact")


@dataclass
class Verdict:
    ok: bool
    records: int
    first_bad: int | None
    message: str
