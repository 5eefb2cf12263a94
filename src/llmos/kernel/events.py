"""Reading what running jobs report through their context (``events.jsonl``) into the store.

The job appends one JSON object per line; the daemon reads complete lines from the
offset it stored last time, so a restarted daemon neither loses nor repeats a report.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.orm import Session

from llmos.kernel.context import EVENTS_FILE
from llmos.store.models import Job, JobMetric

MAX_READ = 4 << 20  # bytes read per job per tick, so one chatty job cannot stall the loop


def read_new(workdir: Path, offset: int) -> tuple[int, list[dict]]:
    """Complete event lines after ``offset``; returns the new offset and the events."""
    path = workdir / EVENTS_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return offset, []
    if size <= offset:
        return offset, []
    with open(path, "rb") as f:
        f.seek(offset)
        chunk = f.read(min(size - offset, MAX_READ))
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset, []
    events = []
    for line in chunk[: end + 1].splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a program wrote garbage into its own event file: skip that line
        if isinstance(event, dict):
            events.append(event)
    return offset + end + 1, events


def apply(session: Session, job: Job, events: list[dict]) -> None:
    """Store progress and metrics reported by ``job``."""
    for event in events:
        kind = event.get("type")
        at = _time(event.get("t"))
        if kind == "progress":
            job.progress_done = _float(event.get("done"))
            job.progress_total = _float(event.get("total"))
            unit, info = event.get("unit"), event.get("info")
            job.progress_unit = unit[:50] if isinstance(unit, str) else None
            job.progress_info = info if isinstance(info, dict) and len(info) <= 20 else None
        elif kind == "metric":
            value = _float(event.get("value"))
            name = event.get("name")
            if value is None or not isinstance(name, str) or not name:
                continue
            step = event.get("step")
            session.add(JobMetric(job_id=job.id, name=name[:200], value=value,
                                  step=step if isinstance(step, int) else None, at=at))


def _float(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _time(t) -> datetime:
    try:
        return datetime.fromtimestamp(float(t), tz=timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return datetime.now(timezone.utc)
