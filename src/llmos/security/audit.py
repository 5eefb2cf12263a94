"""The audit log: append-only, each record chained to the one before by a keyed MAC, and
anchored outside the database.

A record holds who did what to which target, when, with which request id and outcome.
Its ``hash`` is the HMAC-SHA256, under the *audit key*, of its canonical JSON *including
the previous record's hash*, so changing, removing or reordering any record breaks every
MAC after it, and no one without the key can compute a chain that verifies (an unkeyed
sha256 chain can be rewritten by anyone who can write the database). The key lives in a
file beside the encryption keys (``LLMOS_AUDIT_KEY_FILE``, default ``LLMOS_HOME/audit.key``,
mode 0600), never in the database; its check value is (``key_checks``, id ``audit``), so
a daemon started with another audit key refuses to start instead of writing a chain that
can never verify.

The *head file* (``LLMOS_HOME/audit.head``, 0600) anchors the chain outside the database:
one line per record appended (and fsync'd) after the record commits, giving its position
and MAC. Truncating the log's tail and fixing the database's head, or rewriting records,
no longer matches the file. Its first line is a header naming how many records came from
before the chain was keyed: a store from before this scheme keeps its unkeyed sha256
records (checked as they were written, once, when the head file is made, and on every
verify) and continues keyed from there; the first keyed record's MAC covers the last old
hash, so the old records cannot change either.

The gate (``api/gate.py``) decides which requests get a record (:func:`should_record`):
every write, every read of a sensitive artifact and every use of administrator power
(noted while the request runs: :func:`note_read`, :func:`note_admin`), never a serving
worker's heartbeat that succeeds (one every 2 s per worker); a created object's id goes
in the record's detail (:func:`created_ids`). ``verify`` names what is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from llmos.security.crypto import KeyChecks, secret_file
from llmos.store.db import Database
from llmos.store.models import AuditHead, AuditRecord, utcnow

if TYPE_CHECKING:
    from llmos.security.rbac import Principal

log = logging.getLogger("llmos.audit")

GENESIS = "0" * 64
AUDIT_KEY_ID = "audit"  # the audit key's id in key_checks
HEAD_FORMAT = 1


def _canonical(prev: str, at: datetime, actor: str, action: str, target: str, outcome: str,
               request_id: str, detail: dict | None) -> bytes:
    return json.dumps({"prev": prev, "at": at.isoformat(), "actor": actor, "action": action,
                       "target": target, "outcome": outcome, "request_id": request_id,
                       "detail": detail or {}}, sort_keys=True, separators=(",", ":")).encode()


def record_hash(prev: str, at: datetime, actor: str, action: str, target: str,
                outcome: str, request_id: str, detail: dict | None) -> str:
    """The unkeyed sha256 link of records written before the chain was keyed."""
    return hashlib.sha256(_canonical(prev, at, actor, action, target, outcome, request_id,
                                     detail)).hexdigest()


def record_mac(key: bytes, prev: str, at: datetime, actor: str, action: str, target: str,
               outcome: str, request_id: str, detail: dict | None) -> str:
    """The keyed link of a record: HMAC-SHA256 under the audit key."""
    return hmac.new(key, _canonical(prev, at, actor, action, target, outcome, request_id,
                                    detail), hashlib.sha256).hexdigest()


def _fields(r: AuditRecord, prev: str) -> tuple:
    return (prev, r.at, r.actor, r.action, r.target, r.outcome, r.request_id, r.detail)


# -- what a request's record says --------------------------------------------------------------

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Routes whose successful calls are not recorded: a serving worker's heartbeat (every 2 s
# per worker; ~43,000 records a day each). A refused one still is.
UNAUDITED_WHEN_OK = frozenset({"PUT /v1/serving/workers/{job_id}"})
_IDENTIFYING = ("id", "name", "team", "dataset", "model", "version")


@dataclass
class RequestNotes:
    """What a request did that its audit record must say, noted by the services while it
    runs (the gate starts one per request; outside a request, notes go nowhere)."""

    reads: list[str] = field(default_factory=list)  # sensitive things read
    admin: list[str] = field(default_factory=list)  # administrator powers used
    # teams whose objects an administrator token read without being a member (for the
    # security alerts, ``monitor/signals.py``; not a reason to write an audit record)
    teams: set[str] = field(default_factory=set)


_NOTES: ContextVar[RequestNotes | None] = ContextVar("llmos_audit_notes", default=None)


def begin_request() -> RequestNotes:
    """Start collecting the current request's notes (the gate calls this)."""
    notes = RequestNotes()
    _NOTES.set(notes)
    return notes


def note_read(what: str) -> None:
    """The current request read something sensitive (e.g. "artifact 12"): record it."""
    notes = _NOTES.get()
    if notes is not None and what not in notes.reads and len(notes.reads) < 50:
        notes.reads.append(what)


def note_admin(what: str) -> None:
    """The current request used administrator power (e.g. "listing users"): record it."""
    notes = _NOTES.get()
    if notes is not None and what not in notes.admin and len(notes.admin) < 50:
        notes.admin.append(what)


def note_team_read(team: str) -> None:
    """An administrator read an object of ``team``, a team it is no member of."""
    notes = _NOTES.get()
    if notes is not None and len(notes.teams) < 100:
        notes.teams.add(team)


def should_record(method: str, action: str, status: int, notes: RequestNotes | None) -> bool:
    """Whether a request gets an audit record: every write (refused ones too) but a
    successful heartbeat, and any request that read something sensitive or used
    administrator power."""
    if action in UNAUDITED_WHEN_OK and status < 400:
        return False
    return method in WRITES or bool(notes and (notes.reads or notes.admin))


def notes_detail(notes: RequestNotes | None) -> dict:
    if notes is None:
        return {}
    return {k: v for k, v in (("read", notes.reads), ("admin", notes.admin)) if v}


def created_ids(body: bytes) -> dict | list | None:
    """What a 201 response created, named by its identifying fields (id, name, team, …;
    never a secret such as a new token): a dict, a list for a batch, or None."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("user"), dict):
        data = data["user"]  # a new user and its first token: the user
    if isinstance(data, dict) and isinstance(data.get("jobs"), list):
        found = [_identity(j) for j in data["jobs"][:100]]
        return [f for f in found if f] or None
    return _identity(data)


def _identity(item) -> dict | None:
    if not isinstance(item, dict):
        return None
    return {k: item[k] for k in _IDENTIFYING
            if isinstance(item.get(k), (int, str)) and not isinstance(item.get(k), bool)} or None


# -- the log -----------------------------------------------------------------------------------


class AuditLog:
    def __init__(self, db: Database, key_file: Path, head_file: Path,
                 checks: KeyChecks | None = None):
        """Open the log: load (or make) the audit key and confirm it against its check
        value (CryptoError on a wrong key), and make the head file if there is none
        (adopting the unkeyed chain of a store from before keyed chains, once it checks)."""
        self.db = db
        self.key_file = Path(key_file).expanduser()
        self.head_file = Path(head_file).expanduser()
        self.key = secret_file(self.key_file)
        (checks or KeyChecks(db)).confirm(AUDIT_KEY_ID, self.key, str(self.key_file))
        if not self.head_file.exists():
            self._start_head()

    # writing

    def append(self, actor: str, action: str, target: str = "", outcome: str = "ok",
               request_id: str = "", detail: dict | None = None) -> AuditRecord:
        """Add a record at the end of the chain. Concurrent writers serialize on the head
        row (PostgreSQL) and on the unique ``prev_hash`` (everywhere): one that loses the
        race tries again on the new head, so the chain never forks and no record is
        dropped. Once committed, its position and MAC go to the head file."""
        for attempt in range(50):
            try:
                rec, position = self._append(actor, action, target, outcome, request_id,
                                             detail)
                break
            except (IntegrityError, OperationalError):
                if attempt == 49:
                    raise
                time.sleep(0.01 * (attempt + 1))
        self._write_head({"n": position, "mac": rec.hash})
        return rec

    def _append(self, actor: str, action: str, target: str, outcome: str, request_id: str,
                detail: dict | None) -> tuple[AuditRecord, int]:
        at = utcnow()
        with self.db.session() as s:
            head = s.scalars(select(AuditHead).where(AuditHead.id == 1)
                             .with_for_update()).first()
            if head is None:
                head = AuditHead(id=1, hash=GENESIS, count=0)
                s.add(head)
                s.flush()
            actor, action, target = actor[:200], action[:200], target[:500]
            outcome, request_id, detail = outcome[:50], request_id[:100], detail or {}
            digest = record_mac(self.key, head.hash, at, actor, action, target, outcome,
                                request_id, detail)
            rec = AuditRecord(at=at, actor=actor, action=action, target=target,
                              outcome=outcome, request_id=request_id, detail=detail,
                              prev_hash=head.hash, hash=digest)
            s.add(rec)
            head.hash, head.count = digest, head.count + 1
            s.flush()
            return rec, head.count

    # the head file

    def _write_head(self, entry: dict, create: bool = False) -> None:
        """Append one line (a single write: lines of concurrent writers never mix) and
        fsync it; the file is made 0600 whatever the umask."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if create else 0)
        self.head_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.head_file, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def _start_head(self) -> None:
        """The head file's header: how many records come from before the chain was keyed
        and the last of their hashes. Those records must form an intact unkeyed chain;
        if they do not, no header is written, and ``verify`` says so from then on."""
        legacy, last, problem = 0, GENESIS, None
        with self.db.session() as s:
            prev = GENESIS
            for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.id)
                                 .execution_options(yield_per=1000)):
                if rec.prev_hash != prev or record_hash(*_fields(rec, prev)) != rec.hash:
                    problem = f"record {rec.id}"
                    break
                prev, legacy = rec.hash, legacy + 1
            last = prev
        if problem is not None:
            log.error("the audit head file %s is missing and the audit log is not an intact "
                      "unkeyed chain (from %s on): `llmos audit verify` reports it",
                      self.head_file, problem)
            return
        try:
            self._write_head({"llmos_audit_head": HEAD_FORMAT, "legacy": legacy,
                              "legacy_hash": last}, create=True)
        except FileExistsError:
            pass  # another process made it meanwhile
        if legacy:
            log.info("audit log: %d records from before keyed chains checked; the chain "
                     "continues keyed", legacy)

    def _read_head(self) -> tuple[dict | None, dict[int, str], str | None]:
        """(header, MAC by position, what is wrong with the file or None)."""
        where = f"the audit head file {self.head_file}"
        try:
            lines = self.head_file.read_bytes().split(b"\n")
        except FileNotFoundError:
            return None, {}, (f"{where} is missing: the log cannot be checked against it "
                              "(it was removed)")
        except OSError as e:
            return None, {}, f"{where} cannot be read: {e.strerror}"
        complete, tail = lines[:-1], lines[-1]  # a last line without "\n": a cut write
        header, marks = None, {}
        for i, raw in enumerate(complete, 1):
            try:
                entry = json.loads(raw)
                if i == 1:
                    if entry.get("llmos_audit_head") != HEAD_FORMAT:
                        raise ValueError
                    header = {"legacy": int(entry["legacy"]),
                              "legacy_hash": str(entry["legacy_hash"])}
                else:
                    marks[int(entry["n"])] = str(entry["mac"])
            except (ValueError, KeyError, TypeError, AttributeError):
                what = ("does not start with its header: it was removed and made again"
                        if i == 1 else f"has a malformed line {i}: it was edited")
                return None, {}, f"{where} {what}"
        if header is None:
            return None, {}, (f"{where} is empty: it was removed and made again" if not tail
                              else f"{where} does not start with its header")
        return header, marks, None

    # reading

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
        """Walk the chain from the first record, checking each link and MAC and each
        position the head file recorded; name the first record that is wrong, or say
        that records are missing from the end."""
        who.require_admin("verifying the audit log")
        header, marks, problem = self._read_head()
        with self.db.session() as s:
            if problem is not None:
                if header is None and not self.head_file.exists() and not s.scalar(
                        select(func.count()).select_from(AuditRecord)):
                    return Verdict(True, 0, None, "0 records, chain intact")
                return Verdict(False, 0, None, problem)
            legacy, legacy_hash = header["legacy"], header["legacy_hash"]
            prev, checked = GENESIS, 0
            head = s.get(AuditHead, 1)
            for rec in s.scalars(select(AuditRecord).order_by(AuditRecord.id)
                                 .execution_options(yield_per=1000)):
                position = checked + 1
                if rec.prev_hash != prev:
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} does not follow the record before it "
                                   "(a record was removed, inserted or reordered)")
                expected = (record_hash(*_fields(rec, prev)) if position <= legacy
                            else record_mac(self.key, *_fields(rec, prev)))
                if not hmac.compare_digest(expected, rec.hash):
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} was changed after it was written (its "
                                   f"{'hash' if position <= legacy else 'MAC'} does not "
                                   "match its content)")
                if position == legacy and rec.hash != legacy_hash:
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} is not the last record from before the "
                                   "chain was keyed: those records were rewritten")
                mark = marks.get(position)
                if mark is not None and mark != rec.hash:
                    return Verdict(False, checked, rec.id,
                                   f"record {rec.id} is not the record the head file says "
                                   f"was written at position {position}: the log was "
                                   "rewritten")
                prev = rec.hash
                checked += 1
            written = max([legacy, *marks])
            if written > checked:
                return Verdict(False, checked, None,
                               f"the log ends after {checked} records but {written} were "
                               "written (the head file says so): records were removed from "
                               "its end")
            in_db = head.count if head else 0
            if in_db != checked or prev != (head.hash if head else GENESIS):
                return Verdict(False, checked, None,
                               f"the log ends after {checked} records but {in_db} were "
                               "written: records were removed from its end")
        return Verdict(True, checked, None, f"{checked} records, chain intact")


@dataclass
class Verdict:
    ok: bool
    records: int
    first_bad: int | None
    message: str
