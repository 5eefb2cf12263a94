"""/v1/monitor: what the machine is doing now (``overview``) and what a job, node or GPU
used over time (``usage``).

The overview is built from memory — the daemon's nodes and queue, the sampler's latest
round, the serving workers' heartbeats — plus one query for the names of the jobs shown,
so ``llmos top`` and the dashboard can poll it every second or two.

Visibility is the jobs API's: running and pending jobs and deployments are filtered to
the teams the caller may read (``Principal.readable_teams``; administrators: all); a
job's usage history is answered only after ``JobService.get`` let the caller read that
job (another team's job is "not found", exactly like a missing one). Nodes and GPUs carry
no team: every authenticated caller sees them, as ``/v1/nodes``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import select

from llmos.api.gate import current
from llmos.api.schemas import ERRORS
from llmos.errors import InvalidRequest, NotFound
from llmos.monitor.usage import MAX_WINDOW_S
from llmos.security.rbac import Principal
from llmos.serve.deployments import pool_key
from llmos.store.models import Job

router = APIRouter(prefix="/v1/monitor", tags=["monitor"])
MAX_LISTED = 200  # running and pending jobs per answer; the totals count the rest
CHUNK = 500  # ids per query (SQLite allows 999 bound variables in older builds)
Who = Depends(current)


class UsageRow(BaseModel):
    at: datetime
    cpu: float | None = None
    memory_mb: float | None = None
    read_bytes_s: float | None = None
    write_bytes_s: float | None = None
    gpu_util: float | None = None
    gpu_memory_mb: float | None = None


class UsageHistoryOut(BaseModel):
    kind: str
    subject: str
    resolution_s: int
    samples: list[UsageRow]


@router.get("/overview", responses=ERRORS)
def overview(request: Request, who: Principal = Who) -> dict:
    """Nodes (capacity, allocation, measured use, GPUs), running jobs with their measured
    use, pending jobs with why each waits, and deployments with their load. Jobs and
    deployments are those of the teams you may read; nodes are everyone's. At most
    200 running jobs (the earliest started) and 200 pending ones (the longest waiting)
    are listed; ``running_total`` and ``pending_total`` count them all."""
    state = request.app.state
    daemon, latest = state.daemon, state.sampler.latest()
    teams = who.readable_teams()
    now = time.time()
    with daemon.lock:
        nodes = daemon.nodes.snapshot()
        running = {i: t.job for i, t in daemon.running.items() if _sees(teams, t.job.team)}
        pending = {i: p for i, p in daemon.pending.items() if _sees(teams, p.team)}
    shown_running = sorted(running)[:MAX_LISTED]
    shown_pending = sorted(pending, key=lambda i: (pending[i].queued_at, i))[:MAX_LISTED]
    rows = _job_rows(daemon.db, [*shown_running, *shown_pending])
    return {
        "nodes": [_node(n, latest) for n in nodes],
        "running": [_running(rows[i], running[i], latest) for i in shown_running
                    if i in rows],
        "running_total": len(running),
        "pending": sorted((_pending(rows[i], pending[i], now) for i in shown_pending
                           if i in rows), key=lambda p: (-p["waiting_s"], p["id"])),
        "pending_total": len(pending),
        "deployments": [_deployment(state, d) for d in state.deployments.list(who)],
    }


@router.get("/usage", response_model=UsageHistoryOut, responses=ERRORS)
def usage(request: Request, who: Principal = Who,
          kind: Literal["job", "node", "gpu"] = Query(description="job, node or gpu"),
          subject: str = Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$",
                               description="A job's id, a node's name, or node/index for "
                               "a GPU."),
          window_s: int = Query(default=3600, ge=1, le=MAX_WINDOW_S, description="How far "
                                "back, in seconds (at most 30 days).")) -> UsageHistoryOut:
    """What one job, node or GPU used over the last ``window_s`` seconds, oldest first:
    raw samples up to an hour, minute means up to a day, ten-minute means beyond."""
    state = request.app.state
    if kind == "job":
        if not subject.isdigit() or not 0 < int(subject) < 2**31:
            raise InvalidRequest(f"subject: a job's id is a positive number, not {subject!r}")
        state.jobs.get(who, int(subject), with_transitions=False)  # NotFound: not yours
        subject = str(int(subject))
    sampler = state.sampler
    res, rows = sampler.history.query(kind, subject, window_s, time.time(), sampler.raw_s)
    if kind != "job" and not rows and not _known(state.daemon, kind, subject):
        raise NotFound(f"{kind} {subject!r} not found; see `llmos nodes`")
    return UsageHistoryOut(kind=kind, subject=subject, resolution_s=res,
                           samples=[UsageRow(**r) for r in rows])


def _sees(teams: set[str] | None, team: str | None) -> bool:
    return teams is None or team in teams


def _known(daemon, kind: str, subject: str) -> bool:
    with daemon.lock:
        snaps = {n["name"]: n for n in daemon.nodes.snapshot()}
    if kind == "node":
        return subject in snaps
    node, _, index = subject.rpartition("/")
    return node in snaps and any(str(g["index"]) == index for g in snaps[node]["gpus"])


def _job_rows(db, ids: list[int]) -> dict[int, dict]:
    """The listed jobs' rows, queried ``CHUNK`` ids at a time."""
    out: dict[int, dict] = {}
    if not ids:
        return out
    with db.session() as s:
        for start in range(0, len(ids), CHUNK):
            found = s.execute(select(Job.id, Job.name, Job.program, Job.team, Job.priority,
                                     Job.node, Job.started_at, Job.queued_at, Job.reason)
                              .where(Job.id.in_(ids[start:start + CHUNK]))).all()
            out.update((r.id, r._asdict()) for r in found)
    return out


def _at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat()


def _node(n: dict, latest) -> dict:
    cap, free = n["capacity"], n["free"]
    u = latest.nodes.get(n["name"])
    gpus = []
    for g in n["gpus"]:
        m = latest.gpus.get(f"{n['name']}/{g['index']}")
        gpus.append({"index": g["index"], "name": g["name"], "memory_mb": g["memory_mb"],
                     "allocated": not g["free"], "util": m.gpu_util if m else None,
                     "memory_used_mb": m.gpu_memory_mb if m else None})
    return {
        "name": n["name"], "state": n["state"],
        "capacity": {"cpu": cap["cpu"], "memory_mb": cap["memory_mb"], "gpu": cap["gpu"]},
        "allocated": {"cpu": round(cap["cpu"] - free["cpu"], 3),
                      "memory_mb": cap["memory_mb"] - free["memory_mb"],
                      "gpu": cap["gpu"] - free["gpu"]},
        "usage": ({"cpu": u.cpu, "memory_mb": u.memory_mb, "at": _at(u.at)} if u else None),
        "gpus": gpus,
    }


def _running(row: dict, job, latest) -> dict:
    u = latest.jobs.get(row["id"])
    return {"id": row["id"], "name": row["name"], "team": row["team"],
            "program": row["program"], "node": job.allocation.node,
            "started_at": row["started_at"],
            "usage": ({"cpu": u.cpu, "memory_mb": u.memory_mb, "gpu_util": u.gpu_util,
                       "gpu_memory_mb": u.gpu_memory_mb} if u else None)}


def _pending(row: dict, p, now: float) -> dict:
    return {"id": row["id"], "name": row["name"], "team": row["team"],
            "priority": row["priority"], "queued_at": row["queued_at"],
            "waiting_s": round(max(0.0, now - p.queued_at), 1),
            "reason": row["reason"] or ""}


def _deployment(state, d) -> dict:
    pool = pool_key(d.team, d.pool)
    workers = state.workers.of_pool(pool)
    depth = 0
    for w in workers:
        for m in (w.stats or {}).get("resident", []):
            if m.get("deployment") == d.name:
                depth += m.get("occupancy", {}).get("waiting", 0)
    problem = state.controller.problems.get(pool)
    current_n = state.controller.scaling.get(pool, {}).get("current", 0)
    if problem:
        phase = "failing"
    elif workers:
        phase = "ready"
    elif d.min_replicas == 0 and not current_n:
        phase = "scaled_to_zero"
    else:
        phase = "starting"
    return {"name": d.name, "team": d.team, "state": phase, "replicas": d.replicas,
            "ready": len(workers), "queue_depth": depth}
