"""Jobs: the spec a user submits, the state machine, and the store operations on jobs.

The state machine::

    PENDING -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | PREEMPTED
    PREEMPTED -> PENDING          (requeued; resumes from its checkpoint)
    RUNNING -> PENDING            (retried after a failure, or requeued by a daemon stop)
    PENDING | SCHEDULED -> CANCELLED | FAILED (a dependency failed)

Every change goes through :func:`transition`, which records it with its time and reason.
"""

from __future__ import annotations

import enum
import itertools
import re
from datetime import datetime
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from llmos.config import parse_labels
from llmos.kernel.resources import Request
from llmos.schema import INT32_MAX, RequestBody, RowId
from llmos.store.models import Job, JobDependency, JobTransition, utcnow


class JobState(str, enum.Enum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.SCHEDULED, JobState.CANCELLED, JobState.FAILED}),
    JobState.SCHEDULED: frozenset(
        {JobState.RUNNING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED,
         JobState.PENDING}
    ),
    JobState.PREEMPTED: frozenset({JobState.PENDING, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

PriorityClass = Literal["high", "normal", "low"]
PRIORITY_RANK: dict[str, int] = {"low": 0, "normal": 1, "high": 2}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ResourceSpec(RequestBody):

    cpu: float = Field(default=1.0, gt=0, le=4096, description="CPU cores (fractions allowed).")
    memory_mb: int | None = Field(default=None, gt=0, le=INT32_MAX,
                                  description="Memory limit in MB.")
    gpu: int = Field(default=0, ge=0, le=64, description="Whole GPUs.")
    gpu_memory_mb: int = Field(default=0, ge=0, le=INT32_MAX,
                               description="Memory needed on each GPU.")
    gpu_share_mb: int = Field(default=0, ge=0, le=INT32_MAX,
                              description="A share of one GPU by its memory, in MB (small "
                              "jobs and serving replicas share a GPU); excludes gpu.")

    @model_validator(mode="after")
    def _one_kind_of_gpu(self) -> ResourceSpec:
        if self.gpu and self.gpu_share_mb:
            raise ValueError("gpu (whole GPUs) and gpu_share_mb (a share of one GPU) "
                             "exclude each other")
        return self

    def to_request(self, default_memory_mb: int) -> Request:
        return Request(
            cpu=round(self.cpu, 3),
            memory_mb=self.memory_mb or default_memory_mb,
            gpu=self.gpu,
            gpu_memory_mb=self.gpu_memory_mb,
            gpu_share_mb=self.gpu_share_mb,
        )


class JobSpec(RequestBody):
    """What a user submits."""


    program: str = Field(min_length=1, max_length=1000)
    params: dict[str, Any] = Field(default_factory=dict)
    name: str | None = Field(default=None, max_length=200)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    priority: PriorityClass = "normal"
    team: str | None = Field(default=None, min_length=1, max_length=100,
                             description="The team the job runs for (default: yours).")
    max_retries: int = Field(default=0, ge=0, le=100)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    checkpointable: bool = False
    depends_on: list[RowId] = Field(default_factory=list, max_length=1000)
    executor: str | None = Field(default=None, max_length=50)
    # Placement (kernel/scheduler): labels a node must carry, and a group the job spreads
    # over nodes with (soft) or keeps apart from (anti-affinity: never two on one node).
    node_labels: dict[str, str] = Field(
        default_factory=dict, max_length=16,
        description="Run only on nodes with all these labels (gpu=h100, zone=edge).")
    group: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="Placement group for spread/anti_affinity (default: the job's name).")
    spread: bool = Field(default=False,
                         description="Prefer nodes running the fewest jobs of its group.")
    anti_affinity: bool = Field(default=False,
                                description="Never share a node with a job of its group.")
    multi_node: bool = Field(
        default=False,
        description="When it asks more GPUs than any node has, run it over several nodes "
        "as a gang, one rank per node (its program must be distributed: torch.distributed "
        "from the environment, side effects on rank 0). Without, such a job is refused.")

    @field_validator("node_labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return parse_labels(labels)

    @field_validator("name", "group")
    @classmethod
    def _no_control(cls, text: str | None) -> str | None:
        # A name is shown by `llmos jobs`, `top`, `events` and the dashboard: no control
        # character (a terminal escape, a line break) may hide in it.
        if text is not None and _CONTROL.search(text):
            raise ValueError("must not contain control characters (such as ESC, tab or "
                             "a line break)")
        return text

    @property
    def placement_group(self) -> str | None:
        return self.group or (self.name if (self.spread or self.anti_affinity) else None)

    @field_validator("depends_on")
    @classmethod
    def _positive_ids(cls, ids: list[int]) -> list[int]:
        if any(i <= 0 for i in ids):
            raise ValueError("job ids are positive integers")
        return sorted(set(ids))


class IllegalTransition(Exception):
    pass


def transition(
    session: Session, job: Job, to: JobState, reason: str | None = None, at: datetime | None = None
) -> None:
    """Move ``job`` to state ``to``, recording when and why."""
    current = JobState(job.state)
    if to not in ALLOWED[current]:
        raise IllegalTransition(f"job {job.id}: {current.value} -> {to.value} is not allowed")
    at = at or utcnow()
    session.add(
        JobTransition(
            job_id=job.id, from_state=current.value, to_state=to.value, reason=reason,
            attempt=job.attempt, at=at,
        )
    )
    job.state = to.value
    job.reason = reason
    if to == JobState.SCHEDULED:
        job.scheduled_at = at
    elif to == JobState.RUNNING:
        job.started_at = at
    elif to == JobState.PENDING:
        job.queued_at = at
    if to.terminal:
        job.ended_at = at


def create_job(session: Session, spec: JobSpec, request: Request, executor: str,
               owner: str = "system", team: str | None = None,
               read_roots: list[str] | None = None) -> Job:
    """Insert a PENDING job (dependencies must already be checked to exist)."""
    now = utcnow()
    job = Job(
        name=spec.name,
        program=spec.program,
        params=spec.params,
        cpu=request.cpu,
        memory_mb=request.memory_mb,
        gpu=request.gpu,
        gpu_memory_mb=request.gpu_memory_mb,
        gpu_share_mb=request.gpu_share_mb,
        priority=spec.priority,
        owner=owner,
        team=team or spec.team,
        max_retries=spec.max_retries,
        timeout_s=spec.timeout_s,
        checkpointable=spec.checkpointable,
        executor=executor,
        read_roots=read_roots,
        node_labels=spec.node_labels or None,
        spread_group=spec.placement_group,
        spread=spec.spread,
        anti_affinity=spec.anti_affinity,
        multi_node=spec.multi_node,
        state=JobState.PENDING.value,
        reason="waiting to be scheduled",
        attempt=0,
        failures=0,
        cancel_requested=False,
        events_offset=0,
        created_at=now,
        queued_at=now,
    )
    session.add(job)
    session.flush()
    for dep in spec.depends_on:
        session.add(JobDependency(job_id=job.id, depends_on_id=dep))
    session.add(
        JobTransition(job_id=job.id, from_state=None, to_state=JobState.PENDING.value,
                      reason="submitted", attempt=0, at=now)
    )
    return job


def request_of(job: Job) -> Request:
    return Request(cpu=job.cpu, memory_mb=job.memory_mb, gpu=job.gpu,
                   gpu_memory_mb=job.gpu_memory_mb, gpu_share_mb=job.gpu_share_mb or 0)


class Service(NamedTuple):
    """What a job received in its ended attempts, as the attained-service policies count
    it (``PendingJob.attained_s``, ``promoted_service_s``, ``ran_s``, ``waited_s``)."""

    attained_s: float  # GPU-seconds (cpu-seconds without GPUs), all attempts
    ran_s: float  # seconds run since its last promotion (all, if never promoted)
    waited_s: float  # seconds waited once it had run, since its last promotion
    promoted_service_s: float | None  # attained_s since its last promotion; None: never


def service_of(session: Session, job: Job) -> Service:
    """The service a job received in its ended attempts, from its stored transitions
    (each RUNNING period up to the next transition), and its waits between them. An
    attempt still running counts nothing yet, nor does the wait going on. A share of a
    GPU counts as one GPU: the shared GPU's memory is not at hand here, so an ended share
    weighs more in its team's history than it accrued while running (RunningJob.service
    counts its fraction of the GPU when the GPU's memory is known)."""
    times = session.execute(
        select(JobTransition.to_state, JobTransition.at)
        .where(JobTransition.job_id == job.id).order_by(JobTransition.id)).all()
    return _service(job, times)


WAITING = (JobState.PENDING.value, JobState.PREEMPTED.value)


def _service(job: Job, times) -> Service:
    """:func:`service_of` from the job's (state, at) transitions, in order."""
    rate = job.gpu or (1.0 if job.gpu_share_mb else job.cpu) or 0.0
    promoted = job.promoted_at
    total = ran = waited = since = 0.0
    for (state, at), (_, after) in itertools.pairwise(times):
        seconds = max(0.0, (after - at).total_seconds())
        counted = promoted is None or at >= promoted  # since its last promotion
        if state == JobState.RUNNING.value:
            total += seconds * rate
            if counted:
                ran += seconds
                since += seconds * rate
        elif state in WAITING and counted and ran > 0:
            waited += seconds
    return Service(total, ran, waited, None if promoted is None else since)


ENDED = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)


def recent_services(session: Session, keep: int) -> list[tuple[str, bool, float]]:
    """(team, whether it held GPUs, service received in all) of the ``keep`` jobs of each
    team that ended last after having run, oldest first: what the daemon's
    :class:`~llmos.kernel.scheduler.history.ServiceHistory` starts from. Per team, so a
    busy team's jobs never push a quiet team's out. One query for the jobs (a window
    over each team), one per 500 for their transitions."""
    newest = func.row_number().over(partition_by=Job.team,
                                    order_by=(Job.ended_at.desc(), Job.id.desc()))
    ended = (select(Job.id, Job.team, Job.gpu, Job.gpu_share_mb, Job.cpu, Job.promoted_at,
                    Job.ended_at, newest.label("newest"))
             .where(Job.state.in_(ENDED), Job.started_at.is_not(None),
                    Job.ended_at.is_not(None))
             .subquery())
    jobs = session.execute(select(ended).where(ended.c.newest <= keep)
                           .order_by(ended.c.ended_at, ended.c.id)).all()
    times: dict[int, list] = {job.id: [] for job in jobs}
    ids = list(times)
    for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):  # bounded IN lists
        rows = session.execute(
            select(JobTransition.job_id, JobTransition.to_state, JobTransition.at)
            .where(JobTransition.job_id.in_(chunk)).order_by(JobTransition.id))
        for job_id, state, at in rows:
            times[job_id].append((state, at))
    return [(job.team, bool(job.gpu or job.gpu_share_mb),
             _service(job, times[job.id]).attained_s) for job in jobs]
