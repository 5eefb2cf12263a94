"""Health and resources."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from llmos import __version__
from llmos.api.gate import current
from llmos.api.schemas import (ERRORS, Health, IsolationOut, NodeOut, ResourcesReport,
                                SchedulerOut)
from llmos.errors import NotFound
from llmos.security.rbac import Principal
from llmos.store.models import Node

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["system"])
def healthz() -> Health:
    """Liveness: answers while the daemon runs."""
    return Health(status="ok", version=__version__)


@router.get("/metrics", tags=["system"], responses={**ERRORS, 200: {
    "content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request, who: Principal = Depends(current)) -> Response:
    """Prometheus metrics: serving requests, time to first token, inter-token latency,
    tokens, queue depth, batch size, resident models, loads, evictions; the job queue,
    queue waits, run times and outcomes, scheduling passes, preemptions; each node's and
    GPU's capacity, allocation and measured use; each team's use and artifact store (the
    families are listed in ``llmos/monitor/metrics.py``). A series with a team is shown
    to callers who may read that team; node and GPU series to every caller whose token
    may read; other series without a team to administrators only."""
    return Response(request.app.state.metrics.render(who.readable_teams(),
                                                     public="read" in who.scopes),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/resources", response_model=ResourcesReport, tags=["system"], responses=ERRORS,
            dependencies=[Depends(current)])
def resources(request: Request) -> ResourcesReport:
    """Each node's capacity and free resources, and the scheduler's queue."""
    daemon = request.app.state.daemon
    with daemon.lock:
        nodes = [NodeOut(**n) for n in daemon.nodes.snapshot()]
        sched = SchedulerOut(pending=len(daemon.pending), running=len(daemon.running),
                             last_pass_ms=round(daemon.last_pass_ms, 3))
        level, detail = daemon.isolation()
    return ResourcesReport(nodes=nodes, scheduler=sched,
                           isolation=IsolationOut(level=level, detail=detail))


@router.get("/v1/nodes", response_model=list[NodeOut], tags=["system"], responses=ERRORS)
def nodes(request: Request, who: Principal = Depends(current)) -> list[NodeOut]:
    """Every node jobs run on: capacity, free resources, labels, state (ready, draining,
    lost) with its reason, running jobs, last heartbeat; and, for system administrators,
    its network address and the executor's node id."""
    daemon = request.app.state.daemon
    with daemon.lock:
        snaps = daemon.nodes.snapshot()
    with daemon.db.session() as s:
        beats = {n.name: n.heartbeat_at for n in s.query(Node)}
    if not who.is_system_admin:  # where the machines are is the operators' business
        snaps = [{**n, "address": "", "node_id": None} for n in snaps]
    return [NodeOut(**n, heartbeat_at=beats.get(n["name"])) for n in snaps]


@router.post("/v1/nodes/{name}/drain", response_model=NodeOut, tags=["system"],
             responses=ERRORS)
async def drain(name: str, request: Request, who: Principal = Depends(current)) -> NodeOut:
    """Move work off a node (administrators): it takes no new jobs, its checkpointable
    jobs yield and resume elsewhere, serving replicas are replaced, other jobs finish."""
    return await run_in_threadpool(_set_drain, request, who, name, True)


@router.post("/v1/nodes/{name}/undrain", response_model=NodeOut, tags=["system"],
             responses=ERRORS)
async def undrain(name: str, request: Request, who: Principal = Depends(current)) -> NodeOut:
    """Let a drained node take new work again (administrators)."""
    return await run_in_threadpool(_set_drain, request, who, name, False)


def _set_drain(request: Request, who: Principal, name: str, drain: bool) -> NodeOut:
    who.require_admin(f"{'drain' if drain else 'undrain'} node {name}")
    daemon = request.app.state.daemon
    with daemon.lock:
        if name not in daemon.nodes.states:
            raise NotFound(f"node {name!r} not found; see `llmos nodes`")
        daemon.nodes.set_drain(name, drain)
        if drain:
            daemon.drain(name)
        else:
            daemon.wake()
        snap = next(n for n in daemon.nodes.snapshot() if n["name"] == name)
    return NodeOut(**snap)  # the gate's audit record names the route and the node
