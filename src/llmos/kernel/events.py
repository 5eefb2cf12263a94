"""Reading what running jobs report through their context (``events.jsonl``) into the store.

The job appends one JSON object per line; the daemon reads complete lines from the
offset it stored last time, so a restarted daemon neither loses nor repeats a report.
Everything in the file comes from the job, so every field is checked before it is stored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.orm import Session

from llmos.kernel.context import CHECKPOINT_KIND, EVENTS_FILE
from llmos.kernel.jobfiles import open_read
from llmos.schema import INT32_MAX
from llmos.store.models import Artifact, Job, JobMetric

MAX_READ = 4 << 20  # bytes read per job per tick, so one chatty job cannot stall the loop

log = logging.getLogger("llmos.daemon")


def read_new(workdir: Path, offset: int) -> tuple[int, list[dict]]:
    """Complete event lines after ``offset``; returns the new offset and the events."""
    f = open_read(workdir / EVENTS_FILE)  # the job's file: never through a link
    if f is None:
        return offset, []
    with f:
        size = os.fstat(f.fileno()).st_size
        if size <= offset:
            return offset, []
        f.seek(offset)
        chunk = f.read(min(size - offset, MAX_READ))
    end = chunk.rfind(b"\n")
    if end < 0:
        return offset, []
    events = []
    for line in chunk[: end + 1].splitlines():
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a program wrote garbage into its own event file: skip that line
        if isinstance(event, dict):
            events.append(event)
    return offset + end + 1, events


def apply(session: Session, job: Job, events: list[dict]) -> None:
    """Store progress, metrics and stored checkpoints reported by ``job``."""
    for event in events:
        kind = event.get("type")
        at = _time(event.get("t"))
        if kind == "progress":
            job.progress_done = _float(event.get("done"))
            job.progress_total = _float(event.get("total"))
            unit, info = event.get("unit"), event.get("info")
            job.progress_unit = _text(unit)[:50] if isinstance(unit, str) else None
            job.progress_info = _info(info)
        elif kind == "metric":
            value = _float(event.get("value"))
            name = event.get("name")
            if value is None or not isinstance(name, str) or not _text(name):
                continue
            step = event.get("step")
            step = step if isinstance(step, int) and not isinstance(step, bool) and \
                abs(step) <= INT64_MAX else None
            session.add(JobMetric(job_id=job.id, name=_text(name)[:200], value=value,
                                  step=step, at=at))
        elif kind == "checkpoint":
            artifact = event.get("artifact")
            if artifact is not None and _own_checkpoint(session, job, artifact):
                job.checkpoint_artifact = artifact


def _own_checkpoint(session: Session, job: Job, artifact) -> bool:
    """Whether ``artifact`` may become the checkpoint ``job`` resumes from: a stored
    checkpoint of this job, in its team. Anything else (a forged or mistaken id, another
    team's artifact) is ignored and logged: the job's next attempt would otherwise be
    handed an artifact it was never meant to read."""
    if not isinstance(artifact, int) or isinstance(artifact, bool) \
            or not 1 <= artifact <= INT32_MAX:
        log.warning("job %s reported a checkpoint artifact that is not an id: ignored",
                    job.id)
        return False
    art = session.get(Artifact, artifact)
    if art is None or art.team != job.team or art.job_id != job.id \
            or art.kind != CHECKPOINT_KIND:
        log.warning("job %s reported artifact %s as its checkpoint, but it is no checkpoint "
                    "of this job in team %s: ignored", job.id, artifact, job.team)
        return False
    return True


INT64_MAX = (1 << 63) - 1


def _text(value: str) -> str:
    """A job's text as every store can keep it (PostgreSQL refuses NUL characters)."""
    return value.replace("\x00", "")


def _info(info) -> dict | None:
    """Progress counters: a small flat object of numbers and short strings, else nothing
    (a job's event must never be something the store cannot write)."""
    if not isinstance(info, dict) or len(info) > 20:
        return None
    kept = {}
    for key, value in info.items():
        if isinstance(value, str):
            kept[_text(key)[:50]] = _text(value)[:200]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = _float(value)
            if number is not None and abs(number) <= INT64_MAX:
                kept[_text(key)[:50]] = value if isinstance(value, int) else number
    return kept or None


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
