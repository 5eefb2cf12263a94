"""Health and resources."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from llmos import __version__
from llmos.api.gate import current
from llmos.api.schemas import (ERRORS, Health, IsolationOut, NodeOut, ResourcesReport,
                                SchedulerOut)
from llmos.security.rbac import Principal

router = APIRouter()


@router.get("/healthz", response_model=Health, tags=["system"])
def healthz() -> Health:
    """Liveness: answers while the daemon runs."""
    return Health(status="ok", version=__version__)


@router.get("/metrics", tags=["system"], responses={**ERRORS, 200: {
    "content": {"text/plain": {}}, "description": "Prometheus text format"}})
def metrics(request: Request, who: Principal = Depends(current)) -> Response:
    """Prometheus metrics: serving requests, time to first token, inter-token latency,
    tokens, queue depth, batch size, resident models, loads, evictions; the job queue.
    Each series is labelled with its team; a caller sees those of the teams it may read
    (administrators: every series)."""
    return Response(request.app.state.metrics.render(who.readable_teams()),
                    media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/v1/resources", response_model=ResourcesReport, tags=["system"], responses=ERRORS,
            dependencies=[Depends(current)])
def resources(request: Request) -> ResourcesReport:
    """Each node's capacity and free resources, and the scheduler's queue."""
    daemon = request.app.state.daemon
    with daemon.lock:
        nodes = [NodeOut(**daemon.node.snapshot())]
        sched = SchedulerOut(pending=len(daemon.pending), running=len(daemon.running),
                             last_pass_ms=round(daemon.last_pass_ms, 3))
        level, detail = daemon.isolation()
    return ResourcesReport(nodes=nodes, scheduler=sched,
                           isolation=IsolationOut(level=level, detail=detail))
