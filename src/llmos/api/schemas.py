"""Response models of the REST API (request models live with the services: JobSpec)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from llmos.kernel.jobs import JobSpec
from llmos.schema import RequestBody
from llmos.store.models import Artifact, Job, JobMetric, JobTransition


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


# Every route may answer these (401 and 429 come from the gate, before the route runs).
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 409, 413, 422, 429)}


class TransitionOut(BaseModel):
    from_state: str | None
    to_state: str
    reason: str | None
    attempt: int
    at: datetime

    @classmethod
    def of(cls, t: JobTransition) -> TransitionOut:
        return cls(from_state=t.from_state, to_state=t.to_state, reason=t.reason,
                   attempt=t.attempt, at=t.at)


class ResourcesOut(BaseModel):
    cpu: float
    memory_mb: int
    gpu: int
    gpu_memory_mb: int
    gpu_share_mb: int = 0


class ProgressOut(BaseModel):
    done: float
    total: float | None
    unit: str | None = None
    info: dict[str, Any] | None = None


class JobOut(BaseModel):
    id: int
    name: str | None
    program: str
    params: dict[str, Any]
    resources: ResourcesOut
    priority: str
    owner: str
    team: str | None
    max_retries: int
    timeout_s: float | None
    checkpointable: bool
    depends_on: list[int]
    executor: str
    state: str
    reason: str | None
    attempt: int
    failures: int
    cancel_requested: bool
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    node: str | None
    allocation: dict[str, Any] | None
    pid: int | None
    exit_code: int | None
    signal: int | None
    progress: ProgressOut | None
    node_labels: dict[str, str] = Field(default_factory=dict)
    group: str | None = None
    spread: bool = False
    anti_affinity: bool = False
    multi_node: bool = False
    checkpoint_artifact: int | None = Field(
        default=None, description="Its newest checkpoint stored as an artifact (a remote "
        "executor's jobs: the next attempt may resume on another node).")
    result: Any = Field(default=None, description="What the program returned (JSON), once "
                        "it succeeded.")
    transitions: list[TransitionOut] | None = None

    @classmethod
    def of(cls, job: Job, transitions: bool = False) -> JobOut:
        progress = None
        if job.progress_done is not None:
            progress = ProgressOut(done=job.progress_done, total=job.progress_total,
                                   unit=job.progress_unit, info=job.progress_info)
        return cls(
            id=job.id, name=job.name, program=job.program, params=job.params,
            resources=ResourcesOut(cpu=job.cpu, memory_mb=job.memory_mb, gpu=job.gpu,
                                   gpu_memory_mb=job.gpu_memory_mb,
                                   gpu_share_mb=job.gpu_share_mb or 0),
            priority=job.priority, owner=job.owner, team=job.team, max_retries=job.max_retries,
            timeout_s=job.timeout_s, checkpointable=job.checkpointable,
            depends_on=job.depends_on, executor=job.executor, state=job.state,
            reason=job.reason, attempt=job.attempt, failures=job.failures,
            cancel_requested=job.cancel_requested, created_at=job.created_at,
            scheduled_at=job.scheduled_at, started_at=job.started_at, ended_at=job.ended_at,
            node=job.node, allocation=job.allocation, pid=job.pid, exit_code=job.exit_code,
            signal=job.signal, progress=progress, node_labels=job.node_labels or {},
            group=job.spread_group, spread=bool(job.spread),
            anti_affinity=bool(job.anti_affinity), multi_node=bool(job.multi_node),
            checkpoint_artifact=job.checkpoint_artifact,
            result=job.result,
            transitions=[TransitionOut.of(t) for t in job.transitions] if transitions else None,
        )


class JobList(BaseModel):
    jobs: list[JobOut]
    total: int


class JobBatch(RequestBody):
    jobs: list[JobSpec] = Field(min_length=1, max_length=10_000)


class MetricOut(BaseModel):
    name: str
    value: float
    step: int | None
    at: datetime

    @classmethod
    def of(cls, m: JobMetric) -> MetricOut:
        return cls(name=m.name, value=m.value, step=m.step, at=m.at)


class MetricList(BaseModel):
    metrics: list[MetricOut]


class ArtifactOut(BaseModel):
    id: int
    sha256: str
    name: str
    kind: str
    size: int
    encrypted: bool
    job_id: int | None
    parents: list[int]
    team: str | None
    owner: str | None
    created_at: datetime

    @classmethod
    def of(cls, a: Artifact) -> ArtifactOut:
        return cls(id=a.id, sha256=a.sha256, name=a.name, kind=a.kind, size=a.size,
                   encrypted=bool(a.encrypted), job_id=a.job_id, parents=a.parents,
                   team=a.team, owner=a.owner, created_at=a.created_at)


class ArtifactList(BaseModel):
    artifacts: list[ArtifactOut]


class NodeOut(BaseModel):
    name: str
    capacity: dict[str, float]
    free: dict[str, float]
    cores: list[int]
    gpus: list[dict[str, Any]]
    labels: dict[str, str] = Field(default_factory=dict)
    state: str = Field(default="ready", description="ready, draining (takes no new work) "
                       "or lost (gone: its jobs were retried elsewhere).")
    reason: str = ""
    address: str = ""
    node_id: str | None = Field(default=None, description="The executor's own id (Ray).")
    running_jobs: int = 0
    heartbeat_at: datetime | None = None


class SchedulerOut(BaseModel):
    pending: int
    running: int
    last_pass_ms: float


class IsolationOut(BaseModel):
    level: str = Field(description="How jobs are kept from each other and from the daemon: "
                       "'full' (each as its team's own user, in its own namespaces), 'partial' "
                       "(namespaces, the daemon's user) or 'none'.")
    detail: str


class ResourcesReport(BaseModel):
    nodes: list[NodeOut]
    scheduler: SchedulerOut
    isolation: IsolationOut


class Health(BaseModel):
    status: str
    version: str
