"""/v1/deployments (deploy, list, show, scale, canary rollouts, remove) and
/v1/serving/workers (serving workers register and report here, with their own job's
token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from llmos.api.gate import current, needs
from llmos.api.names import name_param
from llmos.api.jobs import JobId
from llmos.api.schemas import ERRORS
from llmos.errors import Forbidden, NotFound
from llmos.schema import RequestBody
from llmos.security.rbac import Principal
from llmos.serve.deployments import (
    ROUTES,
    TASKS,
    CanaryRequest,
    DeploymentService,
    DeployRequest,
    ScaleRequest,
    pool_key,
)
from llmos.store.models import Deployment

router = APIRouter(prefix="/v1/deployments", tags=["serving"])
workers_router = APIRouter(prefix="/v1/serving", tags=["serving"])
Who = Depends(current)
# Every change answers with the deployment: "write" and "read", checked before it is made.
Changes = needs("write", "read", what="change deployments")
Name = name_param("Deployment")


class WorkerOut(BaseModel):
    job_id: int
    resident: list[dict[str, Any]]
    loading: list[dict[str, Any]] = []  # loads in progress: deployment, version, seconds
    used_bytes: int
    budget_bytes: int
    loads: int
    evictions: int
    events: list[dict[str, Any]]
    records: dict[str, Any]  # per resident model: the engine's own record of its steps


class VersionStats(BaseModel):
    version: int = Field(description="The registry's version number.")
    requests: int
    errors: int = Field(description="5xx answers, or no answer from a worker.")
    error_rate: float
    p50_s: float | None = Field(description="Median latency (to the last byte), seconds.")
    p95_s: float | None


class CanaryStats(BaseModel):
    stable: VersionStats
    canary: VersionStats | None


class CanaryOut(BaseModel):
    version: int = Field(description="The canary's version number.")
    weight: int = Field(description="The percent of requests it gets.")
    stats: CanaryStats = Field(description="How each version answered since the canary was "
                               "set (the gateway's memory: a daemon restart starts again).")


class DeploymentOut(BaseModel):
    name: str
    team: str | None
    owner: str
    model: str
    ref: str
    version: int
    task: str = Field(description="What it serves: generate, embed or classify.")
    route: str = Field(description="The OpenAI-compatible route that calls it.")
    engine: str
    replicas: int
    max_batch: int
    priority: str
    pool: str
    created_at: datetime
    updated_at: datetime
    min_replicas: int | None = Field(default=None, description="Autoscaling bounds (null: "
                                     "fixed at replicas).")
    max_replicas: int | None = None
    idle_s: float | None = Field(default=None, description="Scaled to zero after this long "
                                 "without a request (min_replicas 0).")
    node_labels: dict[str, str] = Field(default_factory=dict)
    current_replicas: int = Field(default=0, description="The pool's worker jobs now "
                                  "(starting or ready).")
    desired_replicas: int | None = Field(default=None, description="What the controller "
                                         "wants now (autoscaling decides it).")
    scale_reason: str | None = Field(default=None, description="Why that many.")
    ready_workers: int
    problem: str | None = None
    canary: CanaryOut | None = Field(default=None, description="A canary rollout in "
                                     "progress: another version taking a share of requests.")
    workers: list[WorkerOut] | None = None


class DeploymentList(BaseModel):
    deployments: list[DeploymentOut]


class Heartbeat(RequestBody):
    pool: str = Field(min_length=1, max_length=100)
    url: str = Field(min_length=1, max_length=200, pattern=r"^http://127\.0\.0\.1:[0-9]+$")
    secret: str = Field(min_length=16, max_length=200)
    stats: dict[str, Any] = Field(default_factory=dict)


def _service(request: Request) -> DeploymentService:
    return request.app.state.deployments


def _out(request: Request, d: Deployment, detail: bool = False) -> DeploymentOut:
    state = request.app.state
    version = state.registry.version_by_id(d.version_id)
    task = TASKS[version.task]
    pool = pool_key(d.team, d.pool)  # pools are named within their team
    workers = state.workers.of_pool(pool)
    scaling = state.controller.scaling.get(pool, {})
    out = DeploymentOut(name=d.name, team=d.team, owner=d.owner, model=d.model, ref=d.ref,
                        version=version.version, task=task, route=ROUTES[task],
                        engine=d.engine, replicas=d.replicas,
                        max_batch=d.max_batch, priority=d.priority, pool=d.pool,
                        created_at=d.created_at, updated_at=d.updated_at,
                        min_replicas=d.min_replicas, max_replicas=d.max_replicas,
                        idle_s=d.idle_s, node_labels=d.node_labels or {},
                        current_replicas=scaling.get("current", 0),
                        desired_replicas=scaling.get("desired"),
                        scale_reason=scaling.get("reason"),
                        ready_workers=len(workers),
                        problem=(state.controller.problems.get(pool)
                                 or (state.controller.waiting.get(pool) if not workers
                                     else None)))
    stats = state.gateway.canary_stats(d.id) if d.canary_version_id is not None else None
    if stats and stats["canary"] is not None:  # (none when it ended meanwhile)
        out.canary = CanaryOut(version=stats["canary"]["version"], weight=d.canary_weight,
                               stats=CanaryStats(**stats))
    if detail:
        out.workers = [WorkerOut(job_id=w.job_id, resident=w.stats.get("resident", []),
                                 loading=w.stats.get("loading", []),
                                 used_bytes=w.stats.get("used_bytes", 0),
                                 budget_bytes=w.stats.get("budget_bytes", 0),
                                 loads=w.stats.get("loads", 0),
                                 evictions=w.stats.get("evictions", 0),
                                 events=w.stats.get("events", []),
                                 records=w.stats.get("records", {})) for w in workers]
    return out


@router.post("", response_model=DeploymentOut, status_code=201, responses=ERRORS)
def deploy(body: DeployRequest, request: Request, who: Principal = Changes) -> DeploymentOut:
    """Serve a model version (or the version an alias points at) under a name; deploying an
    existing name switches it to the new version without dropping requests in flight."""
    return _out(request, _service(request).deploy(who, body))


@router.get("", response_model=DeploymentList, responses=ERRORS)
def list_deployments(request: Request, who: Principal = Who) -> DeploymentList:
    """Deployments you may see."""
    return DeploymentList(deployments=[_out(request, d) for d in _service(request).list(who)])


@router.get("/{name:qname}", response_model=DeploymentOut, responses=ERRORS)
def get_deployment(request: Request, name: str = Name, who: Principal = Who) -> DeploymentOut:
    """A deployment with its workers: resident models, memory, loads and unloads."""
    return _out(request, _service(request).get(who, name), detail=True)


@router.post("/{name:qname}/scale", response_model=DeploymentOut, responses=ERRORS)
def scale(body: ScaleRequest, request: Request, name: str = Name,
          who: Principal = Changes) -> DeploymentOut:
    """Set the number of workers (replicas) of the deployment's pool (maintainers); an
    autoscaled deployment is refused (409): deploy it again with other bounds."""
    return _out(request, _service(request).scale(who, name, body.replicas))


@router.post("/{name:qname}/canary", response_model=DeploymentOut, responses=ERRORS)
def set_canary(body: CanaryRequest, request: Request, name: str = Name,
               who: Principal = Changes) -> DeploymentOut:
    """Start a canary rollout (maintainers): ``weight`` percent of requests go to version
    ``version`` of the model the deployment serves; set again, the counts start afresh."""
    return _out(request, _service(request).set_canary(who, name, body.version, body.weight,
                                                      model=body.model))


@router.delete("/{name:qname}/canary", response_model=DeploymentOut, responses=ERRORS)
def clear_canary(request: Request, name: str = Name, who: Principal = Changes) -> DeploymentOut:
    """Roll back a canary (maintainers): every request goes to the deployment's version."""
    return _out(request, _service(request).clear_canary(who, name))


@router.post("/{name:qname}/canary/complete", response_model=DeploymentOut, responses=ERRORS)
def complete_canary(request: Request, name: str = Name,
                    who: Principal = Changes) -> DeploymentOut:
    """Complete a canary (maintainers): its version becomes the deployment's and takes every
    request; 409 when there is none."""
    return _out(request, _service(request).complete_canary(who, name))


@router.delete("/{name:qname}", response_model=DeploymentOut, responses=ERRORS)
def remove(request: Request, name: str = Name, who: Principal = Changes) -> DeploymentOut:
    """Stop serving it; a pool left empty stops its workers (maintainers)."""
    service = _service(request)
    before = _out(request, service.get(who, name))
    service.delete(who, name)
    return before


@workers_router.put("/workers/{job_id}", responses=ERRORS)
def worker_heartbeat(body: Heartbeat, request: Request, job_id: int = JobId,
                     who: Principal = needs("write", "read", what="report as a worker")
                     ) -> dict:
    """A serving worker's address and state (only the worker job itself may say so)."""
    if who.job_id != job_id:
        raise Forbidden(f"only serving worker job {job_id} itself reports here")
    job = request.app.state.jobs.get(who, job_id, with_transitions=False)
    # The pool of that name in the job's own team: a worker job of another team naming a
    # pool must never receive its requests.
    pool = request.app.state.deployments.pool(job.team, body.pool)
    if job.program != "serve.worker" or job.params.get("pool") != body.pool or pool is None:
        raise NotFound(f"job {job_id} is not a worker of pool {body.pool}")
    request.app.state.workers.heartbeat(job_id, pool_key(pool.team, pool.name), body.url,
                                        body.secret, body.stats)
    return {"ok": True}
