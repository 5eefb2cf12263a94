"""The scheduling stages' pure functions over plain data (no state, no clock, no database).

queue order, dependencies, quota, placement (node state, labels, groups: which nodes a
job may go to at all), filter (fit), score, the reservation for the blocked head of the
queue (backfill), preemption. The stage objects that a :class:`Profile` lists wrap
these (:mod:`llmos.kernel.scheduler.profiles`); :func:`llmos.kernel.scheduler.core.schedule`
runs a profile.
"""

from __future__ import annotations

import math
from collections import defaultdict
from operator import indexOf

from llmos.kernel.resources import MILLI, READY, Allocation, NodeState, Request
from llmos.kernel.scheduler.framework import (
    OK,
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
    aging, top = config.aging_s, config.max_rank

    def key(j: PendingJob) -> tuple:  # effective_priority, inlined: this sorts 10,000s
        rank = j.priority + 1 if now - j.queued_at >= aging else j.priority
        return (-(rank if rank <= top else top), j.queued_at, j.id)

    return sorted(jobs, key=key)


# --- dependencies and quota --------------------------------------------------------------


def dependencies(job: PendingJob) -> Status:
    """WAIT while some job it depends on has not succeeded yet."""
    if job.waiting_for:
        ids = ", ".join(str(i) for i in job.waiting_for[:5])
        more = f" and {len(job.waiting_for) - 5} more" if len(job.waiting_for) > 5 else ""
        return Status.wait(f"after job {ids}{more}")
    return OK


class TeamUsage:
    """Resources each team holds, updated as the pass binds jobs."""

    def __init__(self, running: list[RunningJob]):
        self.cpu: dict[str | None, int] = defaultdict(int)
        self.memory: dict[str | None, int] = defaultdict(int)
        self.gpu: dict[str | None, int] = defaultdict(int)
        self.jobs: dict[str | None, int] = defaultdict(int)
        for r in running:
            allocs = r.allocations
            self.add(r.team, sum(sum(a.cores.values()) for a in allocs),
                     sum(a.memory_mb for a in allocs), sum(len(a.gpus) for a in allocs))

    def add(self, team: str | None, millicores: int, memory_mb: int, gpus: int,
            jobs: int = 1) -> None:
        self.cpu[team] += millicores
        self.memory[team] += memory_mb
        self.gpu[team] += gpus
        self.jobs[team] += jobs


def quota(job: PendingJob, usage: TeamUsage, config: SchedulerConfig) -> Status:
    """WAIT while the job's team, with this job added, would hold more than its quota
    (WAIT, not NEVER, even beyond the quota: an administrator may raise it meanwhile;
    submission refuses jobs beyond their quota, :func:`beyond_quota`)."""
    limit = config.quotas.get(job.team) if job.team else None
    if limit is None:
        return OK
    r, team = job.request, job.team
    if limit.jobs is not None and usage.jobs[team] + 1 > limit.jobs:
        return Status.wait(f"over team quota: team {team} may run {limit.jobs} job(s) at "
                           f"once, {usage.jobs[team]} running")
    if limit.cpu is not None and usage.cpu[team] + r.millicores > limit.millicores:
        return Status.wait(f"over team quota: team {team} may use {limit.cpu:g} cpu, "
                           f"{usage.cpu[team] / 1000:g} in use")
    if limit.memory_mb is not None and usage.memory[team] + r.memory_mb > limit.memory_mb:
        return Status.wait(f"over team quota: team {team} may use {limit.memory_mb} MB "
                           f"memory, {usage.memory[team]} MB in use")
    gpus = r.gpu or (1 if r.gpu_share_mb else 0)  # a share holds one GPU, as TeamUsage counts
    if limit.gpu is not None and usage.gpu[team] + gpus > limit.gpu:
        return Status.wait(f"over team quota: team {team} may use {limit.gpu} gpu, "
                           f"{usage.gpu[team]} in use")
    return OK


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
    if limit.gpu is not None and (request.gpu or (1 if request.gpu_share_mb else 0)) > limit.gpu:
        return f"needs {request.gpu} gpu but its team's quota is {limit.gpu} gpu"
    return None


# --- placement: node state, labels, groups ---------------------------------------------------

Selector = tuple[tuple[str, str], ...]


def has_labels(node: NodeState, selector: Selector) -> bool:
    """Whether the node carries every ``key=value`` pair of the selector."""
    labels = node.capacity.labels
    return all(labels.get(k) == v for k, v in selector)


def format_labels(selector: Selector) -> str:
    return ",".join(f"{k}={v}" for k, v in selector)


def select_nodes(selector: Selector, nodes: list[NodeState]) -> tuple[list[NodeState], str | None]:
    """The READY nodes that carry the selector's labels; ``nodes`` itself (the very same
    list, so a later filter's cache by identity still applies) when every node passes.
    When none does, why: a WAIT reason, never NEVER (a node with the labels may join, a
    draining one may come back)."""
    kept = [n for n in nodes if n.state == READY and has_labels(n, selector)]
    if kept:
        return (nodes if len(kept) == len(nodes) else kept), None
    wanted = f" with labels {format_labels(selector)}" if selector else ""
    unready = [f"{n.name} is {n.state}" for n in nodes
               if n.state != READY and has_labels(n, selector)]
    why = f"no ready node{wanted}"
    return kept, f"{why} ({', '.join(unready)})" if unready else why


def group_counts(running: list[RunningJob]) -> dict[str, dict[str, int]]:
    """Group -> node -> how many of the group's jobs run there."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in running:
        if r.group:
            counts[r.group][r.allocation.node] += 1
    return counts


def apart(nodes: list[NodeState], members: dict[str, int]) -> list[NodeState]:
    """The nodes that run no member of the group (``members``: node -> count); ``nodes``
    itself when none does."""
    if not any(members.values()):
        return nodes
    return [n for n in nodes if not members.get(n.name)]


def eligible_nodes(
    job: PendingJob, nodes: list[NodeState], running: list[RunningJob]
) -> list[NodeState]:
    """The nodes the job may go to at all, room aside: READY, with its labels, and (with
    anti-affinity) running no job of its group. What a reservation or a preemption for it
    may consider; the node-selector and anti-affinity filters apply the same rules."""
    kept, _ = select_nodes(job.selector, nodes)
    if job.anti_affinity and job.group and kept:
        kept = apart(kept, group_counts(running)[job.group])
    return kept


# Spread outweighs bin packing: packing's score stays within [-2, 0] (the cpu and memory
# fractions a node keeps free), so one member of the group more always loses.
SPREAD_WEIGHT = 10.0


def spread_score(members_on_node: int) -> float:
    """Prefer the node with the fewest jobs of the group."""
    return -SPREAD_WEIGHT * members_on_node


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


# --- reservation (backfill) --------------------------------------------------------------


def reserve(
    job: PendingJob, nodes: list[NodeState], running: list[RunningJob]
) -> tuple[Reservation, dict[str, NodeState]]:
    """When and where the blocked ``job`` will fit, assuming running jobs end by their
    timeouts; and each node's state at that moment with the job placed (the room that
    backfilled jobs may use beyond that moment). ``nodes``: those the job may use at all
    (:func:`eligible_nodes`), at least one."""
    best: tuple[float, str] | None = None
    futures: dict[str, NodeState] = {}
    by_node = running_by_node(running)
    for node in nodes:
        future = copy_node(node)
        at = -math.inf
        on_node = sorted(by_node.get(node.name, ()), key=lambda r: r.expected_end)
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


def claim_future_room(job: PendingJob, node: NodeState,
                      futures: dict[str, NodeState]) -> Allocation | None:
    """A backfilled job that may outlive the reservation keeps its room at that moment
    (the room it took, for an unreserve to give back; None when it runs on a node the
    reserved job may not use)."""
    future = futures.get(node.name)
    return future.allocate(job.request) if future is not None else None


# --- preemption ----------------------------------------------------------------------------


def preemption(
    job: PendingJob, nodes: list[NodeState], running: list[RunningJob], now: float,
    config: SchedulerConfig,
) -> Preemption | None:
    """The fewest lower-priority checkpointable jobs whose yielding lets ``job`` fit:
    lowest class first, and inside a class the most recently started (least work lost).
    ``nodes``: those the job may use at all (:func:`eligible_nodes`), so no job yields on
    a node where it could not start anyway.

    Lower by the NOMINAL classes: aging orders the queue (:func:`queue_order`) but never
    lets a job preempt one of its own class (two equal jobs would otherwise preempt each
    other every ``aging_s``, each requeue restarting the other's wait, and never progress)."""
    rank = job.priority
    best: Preemption | None = None
    by_node = running_by_node(r for r in running if r.checkpointable and r.priority < rank)
    for node in nodes:
        if node.name not in by_node:
            continue  # no victim here
        candidates = sorted(by_node[node.name], key=lambda r: (r.priority, -r.started_at))
        future = copy_node(node)
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


def running_by_node(running) -> dict[str, list[RunningJob]]:
    """The running jobs on each node (by their leader's allocation), in their order."""
    by_node: dict[str, list[RunningJob]] = defaultdict(list)
    for r in running:
        by_node[r.allocation.node].append(r)
    return by_node


def without(nodes: list[NodeState], node: NodeState | None) -> list[NodeState]:
    """``nodes`` less ``node`` (by identity: node states compare by value), or ``nodes``
    itself when it is not there. Found in C (by id), so dropping a node from the pass's
    long lists costs a copy, not a Python call per node."""
    try:
        i = indexOf(map(id, nodes), id(node))
    except ValueError:
        return nodes
    return nodes[:i] + nodes[i + 1:]


def copy_node(node: NodeState) -> NodeState:
    """A private copy of a node's accounting and state (the pass works on copies)."""
    copy = object.__new__(NodeState)  # its fields as they are: no __post_init__ to redo
    copy.__dict__.update(capacity=node.capacity, core_used=dict(node.core_used),
                         memory_used=node.memory_used, gpus_used=set(node.gpus_used),
                         state=node.state, gpu_shared=dict(node.gpu_shared),
                         milli_used=node.milli_used)
    return copy
