"""The history of measured resource use (``usage_samples``): what the sampler
(:mod:`llmos.monitor.sampler`) records, how it ages, and how it is read back.

One :class:`Usage` is one measurement of a job's process tree, a node or a GPU. Raw rows
(the sampling interval as their resolution, always under 60 s) are kept for an hour;
each complete minute is averaged into one 60 s row, kept for a day; each complete ten
minutes of those into one 600 s row, kept for 30 days. :meth:`UsageHistory.compact` does
both roll-ups and the pruning in a few batched statements; the sampler's thread calls it.
So the table holds at most about (720 + 1440 + 4320) rows per subject.

This module knows nothing of who may read a job's rows: the API checks the job's team
before it calls :meth:`UsageHistory.query` (``api/monitor.py``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import and_, delete, insert, select

from llmos.store.db import Database
from llmos.store.models import UsageSample

MINUTE, TEN_MINUTES = 60, 600
RAW_KEEP_S = 3600
MINUTE_KEEP_S = 86400
TEN_MINUTES_KEEP_S = 30 * 86400
MAX_WINDOW_S = TEN_MINUTES_KEEP_S
KINDS = ("job", "node", "gpu")
FIELDS = ("cpu", "memory_mb", "read_bytes_s", "write_bytes_s", "gpu_util", "gpu_memory_mb")


@dataclass(frozen=True)
class Usage:
    """One measurement. ``at``: epoch seconds. The stored fields are :data:`FIELDS`
    (``cpu`` in cores busy, ``memory_mb`` resident, I/O in bytes per second, ``gpu_util``
    0..1); ``extra`` carries what only the in-memory view needs (a node's capacity, a
    GPU's name and total memory, the job a GPU is allocated to)."""

    kind: str
    subject: str
    at: float
    team: str | None = None
    cpu: float | None = None
    memory_mb: float | None = None
    read_bytes_s: float | None = None
    write_bytes_s: float | None = None
    gpu_util: float | None = None
    gpu_memory_mb: float | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def values(self) -> dict:
        return {f: getattr(self, f) for f in FIELDS}


def raw_resolution(interval_s: float) -> int:
    """The resolution raw rows are stored with: the interval in whole seconds, 1..59 (a
    raw row must never pass for a minute's mean)."""
    return max(1, min(MINUTE - 1, round(interval_s)))


def resolution_for(window_s: float) -> int:
    """The coarsest rows a window needs: raw up to an hour, minutes up to a day, else
    ten minutes (0 stands for raw)."""
    if window_s <= RAW_KEEP_S:
        return 0
    return MINUTE if window_s <= MINUTE_KEEP_S else TEN_MINUTES


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class UsageHistory:
    """Writes, compacts and reads ``usage_samples``. Not thread-safe by itself: one
    sampler thread writes and compacts; readers only query."""

    def __init__(self, db: Database):
        self.db = db
        # How far each roll-up got (epoch of the end of the last rolled bucket), read from
        # the store on the first compaction, then kept here.
        self._rolled: dict[int, float | None] = {}
        self._pruned_at = 0.0

    def record(self, samples: list[Usage], resolution_s: int) -> None:
        """Store one round of measurements in one statement."""
        if not samples:
            return
        rows = [{"kind": u.kind, "subject": u.subject, "team": u.team,
                 "resolution_s": resolution_s, "at": _dt(u.at), **u.values()}
                for u in samples]
        with self.db.session() as s:
            s.execute(insert(UsageSample), rows)

    def compact(self, now: float, prune_every_s: float = MINUTE) -> dict[str, int]:
        """Average every complete minute of raw rows into 60 s rows and every complete ten
        minutes of those into 600 s rows, then (at most every ``prune_every_s``) delete
        the rows past their keeping time. Returns the counts written and deleted."""
        done = {"minute_rows": self._roll(now, MINUTE), "ten_minute_rows": 0, "deleted": 0}
        done["ten_minute_rows"] = self._roll(now, TEN_MINUTES)
        if now - self._pruned_at >= prune_every_s:
            self._pruned_at = now
            done["deleted"] = self._prune(now)
        return done

    def _roll(self, now: float, res: int) -> int:
        source = (UsageSample.resolution_s < MINUTE if res == MINUTE
                  else UsageSample.resolution_s == MINUTE)
        keep = RAW_KEEP_S if res == MINUTE else MINUTE_KEEP_S
        upto = math.floor(now / res) * res  # buckets before this one are complete
        if (self._rolled.get(res) or -math.inf) >= upto:
            return 0  # most rounds: no bucket completed since the last roll-up
        with self.db.session() as s:
            start = self._start(s, res, source)
            if start is None:
                return 0
            start = max(start, math.floor((now - keep) / res) * res)
            if start >= upto:
                return 0
            rows = s.execute(select(UsageSample).where(
                source, UsageSample.at >= _dt(start), UsageSample.at < _dt(upto))).scalars()
            groups: dict[tuple, list[UsageSample]] = defaultdict(list)
            for r in rows:
                bucket = math.floor(r.at.timestamp() / res) * res
                groups[(r.kind, r.subject, r.team, bucket)].append(r)
            means = [{"kind": k, "subject": subj, "team": team, "resolution_s": res,
                      "at": _dt(bucket), **_means(members)}
                     for (k, subj, team, bucket), members in groups.items()]
            if means:
                s.execute(insert(UsageSample), means)
        self._rolled[res] = upto
        return len(means)

    def _start(self, s, res: int, source) -> float | None:
        """Where the roll-up into ``res`` rows resumes: after the newest such row, or at
        the bucket of the oldest source row (None: nothing to roll)."""
        if self._rolled.get(res) is not None:
            return self._rolled[res]
        newest = s.scalar(select(UsageSample.at).where(UsageSample.resolution_s == res)
                          .order_by(UsageSample.at.desc()).limit(1))
        if newest is not None:
            return newest.timestamp() + res
        oldest = s.scalar(select(UsageSample.at).where(source)
                          .order_by(UsageSample.at).limit(1))
        return None if oldest is None else math.floor(oldest.timestamp() / res) * res

    def _prune(self, now: float) -> int:
        deleted = 0
        with self.db.session() as s:
            for cond, keep in ((UsageSample.resolution_s < MINUTE, RAW_KEEP_S),
                               (UsageSample.resolution_s == MINUTE, MINUTE_KEEP_S),
                               (UsageSample.resolution_s == TEN_MINUTES, TEN_MINUTES_KEEP_S)):
                result = s.execute(delete(UsageSample).where(
                    and_(cond, UsageSample.at < _dt(now - keep))))
                deleted += result.rowcount or 0
        return deleted

    def query(self, kind: str, subject: str, window_s: float, now: float,
              raw_s: int) -> tuple[int, list[dict]]:
        """The rows of one subject over the last ``window_s`` seconds, oldest first, at
        the resolution the window needs: (resolution in seconds, rows as dicts); ``raw_s``
        is the raw rows' resolution (the sampling interval)."""
        res = resolution_for(window_s)
        cond = UsageSample.resolution_s < MINUTE if res == 0 else UsageSample.resolution_s == res
        with self.db.session() as s:
            rows = s.execute(
                select(UsageSample).where(UsageSample.kind == kind,
                                          UsageSample.subject == subject, cond,
                                          UsageSample.at >= _dt(now - window_s))
                .order_by(UsageSample.at)).scalars().all()
            out = [{"at": r.at, **{f: getattr(r, f) for f in FIELDS}} for r in rows]
        return res or raw_s, out


def _means(rows: list[UsageSample]) -> dict:
    out = {}
    for f in FIELDS:
        values = [v for v in (getattr(r, f) for r in rows) if v is not None]
        out[f] = sum(values) / len(values) if values else None
    return out
