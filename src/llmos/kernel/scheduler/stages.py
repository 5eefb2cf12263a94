"""The scheduling stages, each a small pure function over plain data.

queue order -> dependencies -> quota -> filter (fit) -> score -> bind, with a reservation
for the blocked head of the queue (backfill) and a preemption stage that names the
victims that would make room. :func:`llmos.kernel.scheduler.core.schedule` runs them.
"""

from __future__ import annotations

import math
from collections import defaultdict

from llmos.kernel.resources import MILLI, NodeState, Request
from llmos.kernel.scheduler.framework import (
    PendingJob,
    Preemption,
    Quota,
    Reservation,
    RunningJob,
    SchedulerConfig,
    Status,
)

# --- queue order -----------------------------------------------------------------------


def effective_priority(job: PendingJob, now: float, config: SchedulerConfig) -> int:
    """The job's class rank, raised by one class once it has waited ``aging_s`` (so a
    stream of newer work cannot starve it); never more than one class, never past the top."""
    aged = now - job.queued_at >= config.aging_s
    return min(config.max_rank, job.priority + (1 if aged else 0))


def queue_order(jobs: list[PendingJob], now: float, config: SchedulerConfig) -> list[PendingJob]:
    """Highest effective priority first; FIFO (by time queued, then id) among equals."""
    return sorted(jobs, key=lambda j: (-effective_priority(j, now, config), j.queued_at, j.id))


# --- dependencies and quota --------------------------------------------------------------


def dependencies(job: PendingJob) -> tuple[Status, str | None]:
    if job.waiting_for:
        ids = ", ".join(str(i) for i in job.waiting_for[:5])
        more = f" and {len(job.waiting_for) - 5} more" if len(job.waiting_for) > 5 else ""
        return Status.WAIT, f"after job {ids}{more}"
    return Status.OK, None


class TeamUsage:
    """Resources each team holds, updated as the pass binds jobs."""

    def __init__(self, running: list[RunningJob]):
        self.cpu: dict[str | None, int] = defaultdict(int)
        self.memory: dict[str | None, int] = defaultdict(int)
        self.gpu: dict[str | None, int] = defaultdict(int)
        self.jobs: dict[str | None, int] = defaultdict(int)
        for r in running:
            self.add(r.team, sum(r.allocation.cores.values()), r.allocation.memory_mb,
                     len(r.allocation.gpus))

    def add(self, team: str | None, millicores: int, memory_mb: int, gpus: int) -> None:
        self.cpu[team] += millicores
        self.memory[team] += memory_mb
        self.gpu[team] += gpus
        self.jobs[team] += 1


def quota(job: PendingJob, usage: TeamUsage, config: SchedulerConfig) -> tuple[Status, str | None]:
    """WAIT while the job's team, with this job added, would hold more than its quota."""
    limit = config.quotas.get(job.team) if job.team else None
    if limit is None:
        return Status.OK, None
    r, team = job.request, job.team
    used = (usage.cpu[team] / 1000, usage.memory[team], usage.gpu[team])
    if limit.jobs is not None and usage.jobs[team] + 1 > limit.jobs:
        return Status.WAIT, (f"over team quota: team {team} may run {limit.jobs} job(s) at "
                             f"once, {usage.jobs[team]} running")
    if limit.millicores is not None and usage.cpu[team] + r.millicores > limit.millicores:
        return Status.WAIT, (f"over team quota: team {team} may use {limit.cpu:g} cpu, "
                             f"{used[0]:g} in use")
    if limit.memory_mb is not None and usage.memory[team] + r.memory_mb > limit.memory_mb:
        return Status.WAIT, (f"over team quota: team {team} may use {limit.memory_mb} MB "
                             f"memory, {used[1]} MB in use")
    if limit.gpu is not None and usage.gpu[team] + r.gpu > limit.gpu:
        return Status.WAIT, (f"over team quota: team {team} may use {limit.gpu} gpu, "
                             f"{used[2]} in use")
    return Status.OK, None


def beyond_quota(request: Request, limit: Quota | None) -> str | None:
    """Why a job could never run under its team's quota even alone, or None."""
    if limit is None:
        return None
    if limit.jobs == 0:
        return "its team's quota allows no running jobs"
    if limit.millicores is not None and request.millicores > limit.millicores:
        return f"needs {request.cpu:g} cpu but its team's quota is {limit.cpu:g} cpu"
    if limit.memory_mb is not None and request.memory_mb > limit.memory_mb:
        return (f"needs {request.memory_mb} MB memory but its team's quota is "
                f"{limit.memory_mb} MB")
    if limit.gpu is not None and request.gpu > limit.gpu:
        return f"needs {request.gpu} gpu but its team's quota is {limit.gpu} gpu"
    return None


# --- filter and score ---------------------------------------------------------------------


def filter_nodes(request: Request, nodes: list[NodeState]) -> tuple[list[NodeState], str | None]:
    """The nodes that fit ``request`` now; when none does, the reason from the closest one."""
    fitting = []
    reason = None
    for node in nodes:
        if node.fits(request):
            fitting.append(node)
        elif reason is None:
            reason = node.shortfall(request)
    return fitting, reason


def score(request: Request, node: NodeState) -> float:
    """Prefer the node the request fills most (bin packing keeps big holes for big jobs)."""
    cap = node.capacity
    cpu_left = (node.free_millicores - request.millicores) / max(1, len(cap.cores) * MILLI)
    mem_left = (node.free_memory_mb - request.memory_mb) / max(1, cap.memory_mb)
    return -(cpu_left + mem_left)


def pick_node(request: Request, nodes: list[NodeState]) -> NodeState:
    return max(nodes, key=lambda n: score(request, n))


# --- reservation (backfill) --------------------------------------------------------------


def reserve(
    job: PendingJob, nodes: list[NodeState], running: list[RunningJob]
) -> tuple[Reservation, dict[str, NodeState]]:
    """When and where the blocked ``job`` will fit, assuming running jobs end by their
    timeouts; and each node's state at that moment with the job placed (the room that
    backfilled jobs may use beyond that moment)."""
    best: tuple[float, str] | None = None
    futures: dict[str, NodeState] = {}
    for node in nodes:
        future = _copy(node)
        at = -math.inf
        on_node = sorted(
            (r for r in running if r.allocation.node == node.name), key=lambda r: r.expected_end
        )
        for r in on_node:
            if future.fits(job.request):
                break
            future.release(r.allocation)
            at = r.expected_end
        if not future.fits(job.request):
            at = math.inf
        else:
            future.allocate(job.request)
        futures[node.name] = future
        if best is None or at < best[0]:
            best = (at, node.name)
    assert best is not None
    return Reservation(job.id, best[1], best[0]), futures


def ends_before(job: PendingJob, now: float, reservation: Reservation) -> bool:
    return job.timeout_s is not None and now + job.timeout_s <= reservation.at


def backfill_allowed(
    job: PendingJob, node: NodeState, now: float, reservation: Reservation,
    futures: dict[str, NodeState],
) -> bool:
    """A job may jump ahead of the reserved one if it ends before the reservation starts,
    or if it also fits in what the reservation leaves free on that node."""
    if ends_before(job, now, reservation):
        return True
    future = futures.get(node.name)
    return future is not None and future.fits(job.request)


def claim_future_room(
    job: PendingJob, node: NodeState, now: float, reservation: Reservation,
    futures: dict[str, NodeState],
) -> None:
    """A backfilled job that may outlive the reservation keeps its room at that moment."""
    if not ends_before(job, now, reservation):
        futures[node.name].allocate(job.request)


# --- preemption ----------------------------------------------------------------------------


def preemption(
    job: PendingJob, nodes: list[NodeState], running: list[RunningJob], now: float,
    config: SchedulerConfig,
) -> Preemption | None:
    """The fewest lower-priority checkpointable jobs whose yielding lets ``job`` fit:
    lowest class first, and inside a class the most recently started (least work lost)."""
    rank = effective_priority(job, now, config)
    best: Preemption | None = None
    for node in nodes:
        candidates = sorted(
            (r for r in running
             if r.allocation.node == node.name and r.checkpointable and r.priority < rank),
            key=lambda r: (r.priority, -r.started_at),
        )
        future = _copy(node)
        victims: list[int] = []
        for r in candidates:
            if future.fits(job.request):
                break
            future.release(r.allocation)
            victims.append(r.id)
        if victims and future.fits(job.request):
            if best is None or len(victims) < len(best.victims):
                best = Preemption(job.id, node.name, tuple(victims))
    return best


def _copy(node: NodeState) -> NodeState:
    return NodeState(node.capacity, dict(node.core_used), node.memory_used, set(node.gpus_used))
