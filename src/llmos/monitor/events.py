"""The event log: every change of a job, deployment, model, dataset or node, and every
alert firing or resolving, as one ``Event`` row, in the order it happened.

Where events come from: :meth:`EventLog.install` hooks the store's session factory (the
composition root calls it). After each flush, the changed rows become events *in the same
transaction* (so an event exists exactly when its change was committed):

* a new ``JobTransition`` — a job created (``created``) or changing state (``state``);
* a ``Deployment`` created, changed (``updated``: version, replicas, canary ...) or
  deleted;
* a new ``ModelVersion`` or ``DatasetVersion`` (``created``);
* a ``Node`` joining (``created``) or changing state (``state``).

The alert engine writes its own ``alert`` events (:meth:`EventLog.record`).

Who sees what: an event carries the team of its object; a reader passes the teams it may
read (:func:`visible_teams`), and rows of other teams are never read — not even their
ids. ``node`` events carry no team and are shown to every authenticated reader (as
``/v1/nodes`` is); other events without a team (an alert about an address, a node's
memory) are shown to administrators only.

Reading in order: ids are the cursor. On PostgreSQL two transactions may commit out of id
order, so a reader never moves past a missing id unless a later row is older than
``GAP_S`` (the missing one was rolled back). A read passes over ids the reader may not
see (``SCAN`` at a time, ``ROUNDS`` scans at most) until it finds a row of its own or
reaches the newest id, and answers the cursor to go on from: a reader learns how far the
log goes, never what another team's events are. Waiting: a ``threading.Condition`` and
asyncio waiters are woken after each commit that wrote events in this process; other
processes' events are found by polling (1 s).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from llmos.security.rbac import Principal
from llmos.store.db import Database
from llmos.store.models import (
    Dataset,
    DatasetVersion,
    Deployment,
    Event,
    JobTransition,
    Model,
    ModelVersion,
    Node,
    utcnow,
)
from llmos.monitor.kinds import PUBLIC_KINDS
from llmos.store.models import Job as JobRow

log = logging.getLogger("llmos.monitor")

GAP_S = 5.0  # a missing id older than this was rolled back
KEEP_S = 30 * 86400.0  # events are kept 30 days (pruned by the alert engine's thread)
SCAN = 1000  # ids looked at per read when checking for gaps
ROUNDS = 100  # at most ROUNDS * SCAN ids passed over in one read (then the cursor returns)
DEPLOYMENT_FIELDS = ("version_id", "replicas", "min_replicas", "max_replicas", "engine",
                     "canary_version_id", "canary_weight", "pool", "ref")
_FLAG = "llmos_events_written"


def visible_teams(who: Principal) -> tuple[set[str] | None, bool]:
    """What ``who`` may read of the event log: (its teams — None for every team —, and
    whether it sees the public kinds). A token without the ``read`` scope sees nothing."""
    if "read" not in who.scopes:
        return set(), False
    return who.readable_teams(), True


def as_dict(e: Event) -> dict:
    return {"id": e.id, "at": e.at.isoformat(), "kind": e.kind, "subject": e.subject,
            "action": e.action, "team": e.team, "state": e.state, "detail": e.detail or {}}


class EventLog:
    """The events of one store: written by session hooks, read in order, waited on."""

    def __init__(self, db: Database, poll_s: float = 1.0):
        self.db = db
        self.poll_s = poll_s
        self._cond = threading.Condition()
        self._seq = 0  # bumped after every commit (in this process) that wrote events
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._installed = False
        self._head = (0, -1.0, -1)  # (newest id, when read, seq then): see newest()
        self.closed = False  # set by close(): every stream ends

    # -- writing ---------------------------------------------------------------------------

    def install(self) -> None:
        """Hook the store's sessions (every session the ``Database`` makes)."""
        if self._installed:
            return
        factory = self.db._sessions  # the store's own sessionmaker: hooks apply to it only
        sa_event.listen(factory, "after_flush", self._after_flush)
        sa_event.listen(factory, "after_commit", self._after_commit)
        sa_event.listen(factory, "after_soft_rollback", self._after_rollback)
        self._installed = True

    def uninstall(self) -> None:
        if not self._installed:
            return
        factory = self.db._sessions
        sa_event.remove(factory, "after_flush", self._after_flush)
        sa_event.remove(factory, "after_commit", self._after_commit)
        sa_event.remove(factory, "after_soft_rollback", self._after_rollback)
        self._installed = False

    def record(self, session: Session, kind: str, subject: str, action: str,
               team: str | None, state: str | None = None, detail: dict | None = None) -> None:
        """Add one event to ``session`` (committed with it); for writers of their own
        events, such as the alert engine."""
        session.add(Event(at=utcnow(), kind=kind, subject=str(subject)[:200], action=action,
                          team=team, state=state, detail=detail))

    def _after_flush(self, session: Session, _context) -> None:
        rows = []
        for obj in session.new:
            if isinstance(obj, Event):
                session.info[_FLAG] = True
            else:
                rows.extend(_created(session, obj))
        for obj in session.dirty:
            rows.extend(_changed(obj))
        for obj in session.deleted:
            if isinstance(obj, Deployment):
                rows.append(_row("deployment", obj.name, "deleted", obj.team,
                                 detail={"model": obj.model}))
        if rows:
            session.connection().execute(insert(Event.__table__), rows)
            session.info[_FLAG] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_FLAG, False):
            self.notify()

    def _after_rollback(self, session: Session, previous) -> None:
        if previous.parent is None:
            session.info.pop(_FLAG, None)

    def notify(self) -> None:
        with self._cond:
            self._seq += 1
            self._cond.notify_all()
            waiters = list(self._waiters)
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # its loop has closed
                self._waiters.discard((loop, ev))

    def close(self) -> None:
        """End every stream (the server is shutting down): waiters wake, streams see
        ``closed`` and finish, so an open dashboard does not hold up ``llmos down``."""
        self.closed = True
        self.notify()

    # -- waiting ---------------------------------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    def wait(self, seq: int, timeout: float | None = None) -> int:
        """Block until an event is committed after ``seq`` was read (or ``timeout``, default
        the poll interval, for other processes' events); returns the new seq."""
        with self._cond:
            if self._seq == seq:
                self._cond.wait(self.poll_s if timeout is None else timeout)
            return self._seq

    async def wait_async(self, seq: int, timeout: float | None = None) -> None:
        """As :meth:`wait`, without holding a thread: for the event stream."""
        loop = asyncio.get_running_loop()
        waiter = (loop, asyncio.Event())
        with self._cond:
            if self._seq != seq:
                return
            self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter[1].wait(), self.poll_s if timeout is None else timeout)
        except TimeoutError:
            pass
        finally:
            with self._cond:
                self._waiters.discard(waiter)

    def prune(self, keep_s: float = KEEP_S, batch: int = 10_000) -> int:
        """Delete events older than ``keep_s`` (oldest first, at most ``batch`` per call:
        ids grow with time, so the first newer row bounds the delete). Returns how many."""
        cutoff = utcnow() - timedelta(seconds=keep_s)
        with self.db.session() as s:
            first = s.scalar(select(Event.id).order_by(Event.id).limit(1))
            if first is None:
                return 0
            newer = s.scalar(select(Event.id).where(Event.at >= cutoff, Event.id >= first)
                             .order_by(Event.id).limit(1))
            end = min(newer if newer is not None else first + batch, first + batch)
            return s.execute(delete(Event).where(Event.id < end)).rowcount or 0

    # -- reading ---------------------------------------------------------------------------

    def latest_id(self) -> int:
        with self.db.session() as s:
            return s.scalar(select(Event.id).order_by(Event.id.desc()).limit(1)) or 0

    def newest(self) -> int:
        """The newest event id, read at most once per poll interval per process and again
        after each commit here that wrote events: every open stream asks it before reading,
        so idle streams cost one query per second in all, not one each."""
        head, at, seq = self._head
        now, current = time.monotonic(), self._seq
        if seq == current and now - at < self.poll_s:
            return head
        head = self.latest_id()
        self._head = (head, now, current)
        return head

    def recent(self, kinds=None, subject: str | None = None, teams: set[str] | None = None,
               public: bool = True, limit: int = 100) -> list[dict]:
        """The newest ``limit`` events the reader may see, oldest first."""
        with self.db.session() as s:
            q = _filtered(select(Event), kinds, subject, teams, public)
            rows = s.scalars(q.order_by(Event.id.desc()).limit(limit)).all()
            return [as_dict(e) for e in reversed(rows)]

    def read(self, after: int, kinds=None, subject: str | None = None,
             teams: set[str] | None = None, public: bool = True,
             limit: int = 100) -> tuple[list[dict], int]:
        """Events after id ``after`` that the reader may see, oldest first, and the cursor
        to read from next. Never moves past an id that may still commit (see module).
        Ids the reader may not see are passed over ``SCAN`` at a time until a visible row
        is found or the newest id is reached (at most ``ROUNDS`` scans per call: the
        cursor then tells the caller where to go on)."""
        expired = utcnow() - timedelta(seconds=GAP_S)
        cursor = after
        with self.db.session() as s:
            for _ in range(ROUNDS):
                seen = s.execute(select(Event.id, Event.at).where(Event.id > cursor)
                                 .order_by(Event.id).limit(SCAN)).all()
                upto = _safe_upto(cursor, seen, expired)
                if upto == cursor:
                    return [], cursor
                q = _filtered(select(Event).where(Event.id > cursor, Event.id <= upto),
                              kinds, subject, teams, public)
                rows = s.scalars(q.order_by(Event.id).limit(limit)).all()
                if rows:
                    if len(rows) == limit:
                        upto = rows[-1].id
                    return [as_dict(e) for e in rows], upto
                cursor = upto
                if len(seen) < SCAN or upto != seen[-1][0]:  # the newest, or a gap
                    return [], cursor
        return [], cursor


def _filtered(q, kinds, subject, teams: set[str] | None, public: bool):
    if kinds:
        q = q.where(Event.kind.in_(list(kinds)))
    if subject is not None:
        q = q.where(Event.subject == str(subject))
    if teams is not None:  # None: every team (administrators)
        shown = [Event.team.in_(sorted(teams))] if teams else []
        if public:
            shown.append(Event.kind.in_(PUBLIC_KINDS))
        q = q.where(or_(*shown)) if shown else q.where(Event.id < 0)
    elif not public:
        q = q.where(Event.id < 0)
    return q


def _safe_upto(after: int, seen, expired: datetime) -> int:
    """The highest id up to which every id is committed, or missing for longer than
    ``GAP_S`` (a later row older than that: the missing one was rolled back)."""
    upto = after
    for event_id, at in seen:
        if event_id != upto + 1 and (at is None or at > expired):
            break
        upto = event_id
    return upto


def _row(kind: str, subject, action: str, team: str | None, state: str | None = None,
         detail: dict | None = None) -> dict:
    return {"at": utcnow(), "kind": kind, "subject": str(subject)[:200],
            "action": action, "team": team, "state": state, "detail": detail or {}}


def _loaded(session: Session, cls, key):
    """An object already in the session (no SQL inside a flush), else None."""
    return session.identity_map.get(session.identity_key(cls, key)) if key else None


def _created(session: Session, obj) -> list[dict]:
    if isinstance(obj, JobTransition):
        return [_job_event(session, obj)]
    if isinstance(obj, Deployment):
        return [_row("deployment", obj.name, "created", obj.team,
                     detail={"model": obj.model, "ref": obj.ref, "replicas": obj.replicas})]
    if isinstance(obj, ModelVersion):
        name, team = _owner_of(session, Model, obj.model_id)
        return [_row("model", name, "created", team,
                     detail={"version": obj.version, "job": obj.job_id})]
    if isinstance(obj, DatasetVersion):
        name, team = _owner_of(session, Dataset, obj.dataset_id)
        return [_row("dataset", name, "created", team,
                     detail={"version": obj.version, "job": obj.job_id})]
    if isinstance(obj, Node):
        return [_row("node", obj.name, "created", None, obj.state,
                     detail={"executor": obj.executor, "labels": obj.labels or {}})]
    return []


def _changed(obj) -> list[dict]:
    from sqlalchemy import inspect

    if isinstance(obj, Node):
        history = inspect(obj).attrs.state.history
        if history.added and history.deleted and history.added[0] != history.deleted[0]:
            return [_row("node", obj.name, "state", None, obj.state,
                         detail={"from": history.deleted[0], "reason": obj.reason})]
    elif isinstance(obj, Deployment):
        attrs = inspect(obj).attrs
        changed = [f for f in DEPLOYMENT_FIELDS
                   if (h := getattr(attrs, f).history).added and h.deleted
                   and h.added[0] != h.deleted[0]]
        if changed:
            return [_row("deployment", obj.name, "updated", obj.team,
                         detail={"changed": changed, "replicas": obj.replicas,
                                 "canary_weight": obj.canary_weight})]
    return []


def _job_event(session: Session, t: JobTransition) -> dict:
    job = _loaded(session, JobRow, t.job_id)
    if job is not None:
        team, name, node = job.team, job.name, job.node
    else:
        found = session.connection().execute(
            select(JobRow.team, JobRow.name, JobRow.node).where(JobRow.id == t.job_id)).first()
        team, name, node = found if found else (None, None, None)
    detail = {"from": t.from_state, "reason": t.reason, "attempt": t.attempt, "name": name}
    if node:
        detail["node"] = node
    # ``at`` is when the change was written (not the transition's own time): the reader's
    # gap rule compares the times rows were written.
    return _row("job", t.job_id, "created" if t.from_state is None else "state", team,
                t.to_state, detail)


def _owner_of(session: Session, cls, key) -> tuple[str, str | None]:
    """The name and team of a model or dataset, from the session or the database."""
    row = _loaded(session, cls, key)
    if row is not None:
        return row.name, row.team
    found = session.connection().execute(
        select(cls.name, cls.team).where(cls.id == key)).first()
    return (found[0], found[1]) if found else (str(key), None)
