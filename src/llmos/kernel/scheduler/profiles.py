"""The stage objects of the default policy, and the default profile that lists them.

Each stage is a small object around a pure function of :mod:`.stages`; what it must
remember between the jobs of one pass lives in the pass's :class:`Cycle` (``begin``
sets it up), so stages hold no state of their own. The default profile::

    queue sort   priority-aging   highest class first (one class up after aging_s), FIFO
    pre-filter   dependencies     WAIT until the jobs it depends on succeeded
                 team-quota       WAIT while its team would go over its quota
    filter       node-selector    READY nodes with every label the job selects; WAIT (never
                                  NEVER) when none: a node with them may join or come back
                 anti-affinity    with anti_affinity: nodes running no job of its group
                 fit              nodes with room now; NEVER when no node with its labels
                                  could ever hold it (whatever the node's state)
                 backfill         once the head holds a reservation: only jobs that cannot
                                  delay it
    post-filter  backfill         the first blocked job gets the reservation (EASY backfill)
                 preemption       ... and the victims whose yielding would let it start;
                                  both only on nodes the job may use (labels, state, group)
    score        bin-pack         the node the job fills most
                 spread           with spread: the node with the fewest of its group (this
                                  outweighs bin-pack; bin-pack breaks its ties)
    reserve      fit, team-quota, backfill, anti-affinity, spread
                                  (each with an idempotent unreserve; the last two count
                                  the group's jobs the pass places)
    permit       (none)           a gang policy would hold members here until all fit
    bind         binder           the binding the daemon applies

Another policy is another :class:`Profile` (fair share: another queue sort; gangs: a
permit; a trace simulator: the same profile driven by recorded jobs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from llmos.kernel.resources import READY, Allocation, NodeState, too_large_reason
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
    job_named,
)

Nodes = list[NodeState]


def _any_has(jobs: list[PendingJob], attribute: str) -> bool:
    """Whether any of ``jobs`` has ``attribute`` set: a stage's begin asks it of every
    pending job, each pass (in C: a long queue waits at every pass)."""
    return any(map(attrgetter(attribute), jobs))


class PriorityAging(Stage):
    """Queue sort: highest effective priority first, FIFO among equals."""

    name = "priority-aging"

    def order(self, jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
        return stages.queue_order(jobs, cycle.now, cycle.config)


class Dependencies(Stage):
    """Pre-filter: a job waits for the jobs it depends on."""

    name = "dependencies"

    def begin(self, cycle: Cycle) -> bool:  # idle when no pending job depends on another
        return _any_has(cycle.pending, "waiting_for")

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
        allocs = (cycle.allocations[job.id], *cycle.extras.get(job.id, ()))
        held = (sum(sum(a.cores.values()) for a in allocs), sum(a.memory_mb for a in allocs),
                sum(len(a.gpus) for a in allocs))
        state.usage.add(job.team, *held)
        state.held[job.id] = held
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        held = cycle.state[self].held.pop(job.id, None)
        if held is not None:
            cycle.state[self].usage.add(job.team, *(-x for x in held), jobs=-1)


class NodeSelector(Stage):
    """Filter: only READY nodes that carry every label the job selects (``gpu=h100``);
    WAIT, never NEVER, when none does: a node with the labels may join, a draining one
    may come back. Each selector's nodes are worked out once a pass (states and labels do
    not change during one) and handed on as the same list every time (``Cycle.views``),
    so Fit remembers its answers for them; with no selector and every node ready that
    list is the pass's own ``cycle.nodes``, Fit's common fast path."""

    name = "node-selector"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = {}  # selector -> (nodes, status)
        # idle when every job may use every node
        return not (cycle.nodes and all(n.state == READY for n in cycle.nodes)
                    and not _any_has(cycle.pending, "selector"))

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        if nodes is not cycle.nodes:  # listed after a filter that narrowed them: no reuse
            return self._select(job, nodes)
        known = cycle.state[self]
        found = known.get(job.selector)
        if found is None:
            found = known[job.selector] = self._select(job, nodes)
            if found[0] and found[0] is not nodes:
                cycle.views[id(found[0])] = found[0]
        return found

    @staticmethod
    def _select(job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        kept, reason = stages.select_nodes(job.selector, nodes)
        return kept, (OK if kept else Status.wait(reason or "no ready node"))


@dataclass
class _Groups:
    counts: dict[str, dict[str, int]]  # group -> node -> its jobs running there
    held: dict[int, tuple[str, str]] = field(default_factory=dict)  # job -> (group, node)


class _GroupCount(Stage):
    """How many jobs of each group run on each node, for one pass: from the running jobs
    at ``begin``, then reserve counts each job the pass places (so list the stage under
    reserves too, as the default profile does)."""

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = _Groups(stages.group_counts(cycle.running))
        return True

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        if job.group:
            state: _Groups = cycle.state[self]
            state.counts[job.group][node.name] += 1
            state.held[job.id] = (job.group, node.name)
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        state: _Groups = cycle.state[self]
        held = state.held.pop(job.id, None)
        if held is not None:
            state.counts[held[0]][held[1]] -= 1


class AntiAffinity(_GroupCount):
    """Filter: a job with ``anti_affinity`` goes only to a node running no job of its
    group (counting those this pass placed); WAIT when every node left runs one."""

    name = "anti-affinity"

    def begin(self, cycle: Cycle) -> bool:  # idle when no pending job keeps apart
        return (super().begin(cycle) and _any_has(cycle.pending, "anti_affinity")
                and any(j.anti_affinity and j.group for j in cycle.pending))

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        if not (job.anti_affinity and job.group):
            return nodes, OK
        kept = stages.apart(nodes, cycle.state[self].counts[job.group])
        if kept:
            return kept, OK
        labels = f" with labels {stages.format_labels(job.selector)}" if job.selector else ""
        return kept, Status.wait(f"anti-affinity: every ready node{labels} already runs a "
                                 f"job of group {job.group}")


class Spread(_GroupCount):
    """Score: a job with ``spread`` prefers the node running the fewest jobs of its group
    (strong enough to outweigh bin-pack, which then breaks ties)."""

    name = "spread"

    def begin(self, cycle: Cycle) -> bool:  # idle when no pending job spreads
        return (super().begin(cycle) and _any_has(cycle.pending, "spread")
                and any(j.spread and j.group for j in cycle.pending))

    def score(self, cycle: Cycle, job: PendingJob, node: NodeState) -> float:
        if not (job.spread and job.group):
            return 0.0
        return stages.spread_score(cycle.state[self].counts[job.group].get(node.name, 0))


class Fit(Stage):
    """Filter: the nodes with room for the request now (remembered per request, and per
    selector's list of nodes, until the next reservation changes a node); NEVER when the
    request is larger than every node that carries its labels, whatever that node's state.
    Reserve: take the room on the chosen node (the pass's copy)."""

    name = "fit"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = {}  # request's fields -> (fitting nodes, status)
        return True

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        r = job.request  # keyed by a plain tuple: hashed and compared in C, not Python
        key = (r.cpu, r.memory_mb, r.gpu, r.gpu_memory_mb, r.gpu_share_mb)
        if nodes is not cycle.nodes:
            if id(nodes) not in cycle.views:  # a list made for this job alone
                return self._fit(cycle, job, nodes)
            key = (id(nodes), key)  # one selector's nodes: the same list all pass
        cache = cycle.state[self]
        found = cache.get(key)
        if found is None:
            found = cache[key] = self._fit(cycle, job, nodes)
        return found

    @staticmethod
    def _fit(cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        fitting, reason = stages.filter_nodes(job.request, nodes)
        if fitting:
            return fitting, OK
        never = too_large_reason(job.request, [n.capacity for n in nodes])
        if not never:
            return fitting, Status.wait(reason or "does not fit")
        # Larger than every node it may use now. NEVER only when no node with its labels
        # could ever hold it, whatever that node's state: a draining or lost one that
        # could may come back. (No ready node with the labels at all is node-selector's
        # WAIT, before this filter.)
        could = [f"{n.name} ({n.state})" for n in cycle.nodes
                 if n.state != READY and stages.has_labels(n, job.selector)
                 and too_large_reason(job.request, [n.capacity]) is None]
        if could:
            return fitting, Status.wait(
                f"no ready node could ever hold it; only {', '.join(could)} could")
        return fitting, Status.never(never)

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        alloc = node.allocate(job.request)
        cycle.allocations[job.id] = alloc
        cycle.running.append(RunningJob(job.id, alloc, job.priority, cycle.now, job.timeout_s,
                                        team=job.team, group=job.group))
        cycle.state[self].clear()
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        alloc: Allocation | None = cycle.allocations.pop(job.id, None)
        if alloc is None:
            return
        next(n for n in cycle.nodes if n.name == alloc.node).release(alloc)
        cycle.running = [r for r in cycle.running if r.allocation is not alloc]
        self.room_freed(cycle)

    def room_freed(self, cycle: Cycle) -> None:
        """Room came back on a node of the pass (a reservation undone, a held room given
        back): the remembered answers no longer hold."""
        cycle.state[self].clear()


@dataclass
class _Backfill:
    futures: dict[str, NodeState] = field(default_factory=dict)  # nodes at the reservation
    claims: dict[int, tuple[str, Allocation]] = field(default_factory=dict)
    head_team: str | None = None  # the team of the job holding the reservation
    by_name: dict[str, NodeState] | None = None  # the pass's nodes by name, when needed
    # the filter's answers while the futures stay as they are: request -> (nodes, kept);
    # and its WAIT, by whether the job is of the head's team
    answers: dict = field(default_factory=dict)
    waits: dict[bool, Status] = field(default_factory=dict)

    def changed(self) -> None:
        self.answers.clear()
        self.waits.clear()


class Backfill(Stage):
    """EASY backfill. Post-filter: the first job that finds no room gets the reservation
    (when and where it will fit, from running jobs' timeouts, on the nodes it may use).
    Filter: after that, a job may start now only where it cannot delay the reservation.
    Reserve: a backfilled job that may outlive the reservation keeps its room at that
    moment."""

    name = "backfill"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = _Backfill()
        return True

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        reservation = cycle.out.reservation
        if reservation is None:
            return nodes, OK
        # It may jump ahead if it ends before the reservation starts, or where it also fits
        # in what the reservation leaves free (a node without a future is one the reserved
        # job may not use: nothing there can delay it).
        futures = cycle.state[self].futures
        if not futures or self.ends_in_time(cycle, job, reservation):
            return nodes, OK  # nothing guarded, or it ends before the reservation anyway
        state: _Backfill = cycle.state[self]
        request = job.request
        known = state.answers.get(request)  # the same request over the same nodes: as then
        if known is not None and known[0] is nodes:
            kept = known[1]
        else:
            kept = self._allowed(state, request, nodes, cycle.nodes)
            state.answers[request] = (nodes, kept)  # (holding ``nodes``: its id stays its)
        if kept:
            return kept, OK
        same = state.head_team == job.team
        status = state.waits.get(same)
        if status is None:
            head = job_named(reservation.job_id, state.head_team, job.team)
            status = state.waits[same] = Status.wait(
                f"waiting for {head}, which holds the reservation")
        return kept, status

    @staticmethod
    def ends_in_time(cycle: Cycle, job: PendingJob, reservation) -> bool:
        """Whether ``job`` ends (by its timeout) before the reservation's moment."""
        return stages.ends_before(job, cycle.now, reservation)

    @staticmethod
    def _allowed(state: _Backfill, request, nodes: Nodes, every: Nodes) -> Nodes:
        """Those of ``nodes`` where ``request`` fits beside the reservation (``nodes``
        itself when all of them)."""
        futures = state.futures
        if len(futures) >= len(nodes):
            return [n for n in nodes
                    if (f := futures.get(n.capacity.name)) is None or f.fits(request)]
        # few nodes guarded (a reservation on one node): drop those (the same list when
        # none of them is in it)
        blocked = [name for name, f in futures.items() if not f.fits(request)]
        if state.by_name is None and blocked:
            state.by_name = {n.capacity.name: n for n in every}
        kept = nodes
        for name in blocked:
            kept = stages.without(kept, state.by_name.get(name))
        return kept

    def hold(self, cycle: Cycle, reservation, futures: dict[str, NodeState],
             head_team: str | None) -> None:
        """The pass's reservation, with the node states at its moment."""
        state: _Backfill = cycle.state[self]
        cycle.out.reservation, state.futures, state.head_team = reservation, futures, head_team
        state.changed()

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        if cycle.out.reservation is None:
            nodes = stages.eligible_nodes(job, cycle.nodes, cycle.running)
            if not nodes:  # no node it may use at all: the next blocked job gets it
                return True
            self.hold(cycle, *stages.reserve(job, nodes, cycle.running), job.team)
        return False  # one reservation per pass

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        reservation = cycle.out.reservation
        if reservation is not None:
            state: _Backfill = cycle.state[self]
            room = (None if self.ends_in_time(cycle, job, reservation)
                    else stages.claim_future_room(job, node, state.futures))
            if room is not None:
                state.claims[job.id] = (node.name, room)
                state.changed()
        return OK

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        state: _Backfill = cycle.state[self]
        claim = state.claims.pop(job.id, None)
        if claim is not None:
            state.futures[claim[0]].release(claim[1])
            state.changed()


class Preemption(Stage):
    """Post-filter: for the first job that finds no room, the fewest lower-priority
    checkpointable jobs whose yielding would let it start (the daemon asks them to), on a
    node it may use (ready, with its labels, free of its group under anti-affinity)."""

    name = "preemption"

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        nodes = stages.eligible_nodes(job, cycle.nodes, cycle.running)
        if not nodes:  # nowhere it could start: as backfill, leave it to the next job
            return True
        victims = stages.preemption(job, nodes, cycle.running, cycle.now, cycle.config)
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
                                          backfilled=cycle.out.reservation is not None,
                                          extra=cycle.extras.get(job.id, ())))


def default_profile(name: str = "default", fit: type[Stage] | None = None,
                    backfill: type[Stage] | None = None) -> Profile:
    """The default profile (above); ``llmos-easy`` is the same with the gang stages
    (``fit``: :class:`~.gang.GangFit`, ``backfill``: :class:`~.gang.GangBackfill`)."""
    fit, backfill = (fit or Fit)(), (backfill or Backfill)()
    quota, apart, spread = TeamQuota(), AntiAffinity(), Spread()
    return Profile(
        name=name,
        queue_sort=PriorityAging(),
        bind=Binder(),
        pre_filters=(Dependencies(), quota),
        filters=(NodeSelector(), apart, fit, backfill),
        post_filters=(backfill, Preemption()),
        scores=(BinPack(), spread),
        reserves=(fit, quota, backfill, apart, spread),
    )


DEFAULT_PROFILE = default_profile()
