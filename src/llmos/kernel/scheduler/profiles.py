"""The stage objects of the default policy, and the default profile that lists them.

Each stage is a small object around a pure function of :mod:`.stages`; what it must
remember between the jobs of one pass lives in the pass's :class:`Cycle` (``begin``
sets it up), so stages hold no state of their own. The default profile::

    queue sort   priority-aging   highest class first (one class up after aging_s), FIFO
    pre-filter   dependencies     WAIT until the jobs it depends on succeeded
                 team-quota       WAIT while its team would go over its quota
    filter       fit              nodes with room now; NEVER when no node could ever hold it
                 backfill         once the head holds a reservation: only jobs that cannot
                                  delay it
    post-filter  backfill         the first blocked job gets the reservation (EASY backfill)
                 preemption       ... and the victims whose yielding would let it start
    score        bin-pack         the node the job fills most
    reserve      fit, team-quota, backfill   (each with an idempotent unreserve)
    permit       (none)           a gang policy would hold members here until all fit
    bind         binder           the binding the daemon applies

Another policy is another :class:`Profile` (fair share: another queue sort; gangs: a
permit; a trace simulator: the same profile driven by recorded jobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmos.kernel.resources import Allocation, NodeState, too_large_reason
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.framework import (
    OK,
    Binding,
    Cycle,
    PendingJob,
    Profile,
    RunningJob,
    Stage,
    Status,
)

Nodes = list[NodeState]


class PriorityAging(Stage):
    """Queue sort: highest effective priority first, FIFO among equals."""

    name = "priority-aging"

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        return stages.queue_order(jobs, cycle.now, cycle.config)


class Dependencies(Stage):
    """Pre-filter: a job waits for the jobs it depends on."""

    name = "dependencies"

    def pre_filter(self, cycle: Cycle, job: PendingJob) -> Status:
        return stages.dependencies(job) if job.waiting_for else OK


@dataclass
class _Usage:
    usage: stages.TeamUsage
    held: dict[int, tuple] = field(default_factory=dict)  # job -> what reserve added


class TeamQuota(Stage):
    """Pre-filter: WAIT while the job's team would go over its quota. Reserve: count the
    job against its team for the rest of the pass. Idle in passes without quotas."""

    name = "team-quota"

    def begin(self, cycle: Cycle) -> bool:
        if not cycle.config.quotas:
            return False
        cycle.state[self] = _Usage(stages.TeamUsage(cycle.running))
        return True

    def pre_filter(self, cycle: Cycle, job: PendingJob) -> Status:
        return stages.quota(job, cycle.state[self].usage, cycle.config)

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        state: _Usage = cycle.state[self]
        alloc = cycle.allocations[job.id]
        held = (sum(alloc.cores.values()), alloc.memory_mb, len(alloc.gpus))
        state.usage.add(job.team, *held)
        state.held[job.id] = held
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        held = cycle.state[self].held.pop(job.id, None)
        if held is not None:
            cycle.state[self].usage.add(job.team, *(-x for x in held), jobs=-1)


class Fit(Stage):
    """Filter: the nodes with room for the request now (remembered per request until the
    next reservation changes a node); NEVER when the request is larger than every node.
    Reserve: take the room on the chosen node (the pass's copy)."""

    name = "fit"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = {}  # request's fields -> (fitting nodes, status)
        return True

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        cache = cycle.state[self] if nodes is cycle.nodes else {}
        r = job.request  # keyed by a plain tuple: hashed and compared in C, not Python
        key = (r.cpu, r.memory_mb, r.gpu, r.gpu_memory_mb)
        found = cache.get(key)
        if found is None:
            found = cache[key] = self._fit(job, nodes)
        return found

    @staticmethod
    def _fit(job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        fitting, reason = stages.filter_nodes(job.request, nodes)
        if fitting:
            return fitting, OK
        never = too_large_reason(job.request, [n.capacity for n in nodes])
        if never:
            return fitting, Status.never(never)
        return fitting, Status.wait(reason or "does not fit")

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        alloc = node.allocate(job.request)
        cycle.allocations[job.id] = alloc
        cycle.running.append(RunningJob(job.id, alloc, job.priority, cycle.now, job.timeout_s,
                                        team=job.team))
        cycle.state[self].clear()
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        alloc: Allocation | None = cycle.allocations.pop(job.id, None)
        if alloc is None:
            return
        next(n for n in cycle.nodes if n.name == alloc.node).release(alloc)
        cycle.running = [r for r in cycle.running if r.allocation is not alloc]
        cycle.state[self].clear()


@dataclass
class _Backfill:
    futures: dict[str, NodeState] = field(default_factory=dict)  # nodes at the reservation
    claims: dict[int, tuple[str, Allocation]] = field(default_factory=dict)


class Backfill(Stage):
    """EASY backfill. Post-filter: the first job that finds no room gets the reservation
    (when and where it will fit, from running jobs' timeouts). Filter: after that, a job
    may start now only where it cannot delay the reservation. Reserve: a backfilled job
    that may outlive the reservation keeps its room at that moment."""

    name = "backfill"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = _Backfill()
        return True

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        reservation = cycle.out.reservation
        if reservation is None:
            return nodes, OK
        futures = cycle.state[self].futures
        kept = [n for n in nodes
                if stages.backfill_allowed(job, n, cycle.now, reservation, futures)]
        if kept:
            return kept, OK
        return kept, Status.wait(
            f"waiting for job {reservation.job_id}, which holds the reservation")

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        if cycle.out.reservation is None:
            cycle.out.reservation, cycle.state[self].futures = stages.reserve(
                job, cycle.nodes, cycle.running)
        return False  # one reservation per pass

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        reservation = cycle.out.reservation
        if reservation is not None:
            state: _Backfill = cycle.state[self]
            room = stages.claim_future_room(job, node, cycle.now, reservation, state.futures)
            if room is not None:
                state.claims[job.id] = (node.name, room)
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        state: _Backfill = cycle.state[self]
        claim = state.claims.pop(job.id, None)
        if claim is not None:
            state.futures[claim[0]].release(claim[1])


class Preemption(Stage):
    """Post-filter: for the first job that finds no room, the fewest lower-priority
    checkpointable jobs whose yielding would let it start (the daemon asks them to)."""

    name = "preemption"

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        victims = stages.preemption(job, cycle.nodes, cycle.running, cycle.now, cycle.config)
        if victims is not None:
            cycle.out.preemptions.append(victims)
        return False  # only for the head of the queue, which holds the reservation


class BinPack(Stage):
    """Score: prefer the node the job fills most (keeps big holes for big jobs)."""

    name = "bin-pack"

    def score(self, cycle: Cycle, job: PendingJob, node: NodeState) -> float:
        return stages.score(job.request, node)


class Binder(Stage):
    """Bind: the binding the daemon applies (SCHEDULED, then the executor starts it)."""

    name = "binder"

    def bind(self, cycle: Cycle, job: PendingJob, node: NodeState) -> None:
        cycle.out.bindings.append(Binding(job.id, cycle.allocations[job.id],
                                          backfilled=cycle.out.reservation is not None))


def default_profile() -> Profile:
    fit, quota, backfill = Fit(), TeamQuota(), Backfill()
    return Profile(
        name="default",
        queue_sort=PriorityAging(),
        bind=Binder(),
        pre_filters=(Dependencies(), quota),
        filters=(fit, backfill),
        post_filters=(backfill, Preemption()),
        scores=(BinPack(),),
        reserves=(fit, quota, backfill),
    )


DEFAULT_PROFILE = default_profile()
