"""GPU-aware placement: gangs over nodes, GPU packing, and the reservation and preemption
that a gang needs. Pure functions first, then the stage objects that wrap them.

Gangs (all or nothing). A job asks for ``request.gpu`` GPUs together. When that many fit
in one node's size it always runs on ONE node (NVLink inside a node; across nodes only
when it must: Tiresias' and Gandiva's consolidation), and waits for one. A gang larger
than every node it may use spans nodes (with ``SchedulerConfig.multi_node``; without, it
is NEVER, as with the default profile): the fewest nodes, by taking the nodes with the
most free GPUs first (whole free nodes first), the last one by best fit. Its cpu and
memory are split over its nodes in proportion to the GPUs each holds. It starts only when
every part fits (never a partial gang); the leader's allocation is the binding's
``allocation``, the others ``Binding.extra`` / ``RunningJob.extra``.

Packing (:func:`gpu_pack_score`): a GPU job prefers the node it leaves with the fewest
free GPUs, with a bonus when what it leaves is 0 or a GPU count some pending job asks for
(so whole nodes stay free for 8-GPU gangs); a GPU share prefers nodes whose GPUs are
already shared; a CPU-only job prefers nodes without free GPUs (their cores are for GPU
work). Its weight outweighs cpu/memory bin-pack and is outweighed by spread.

Stages: :class:`GangFit` (filter and reserve: Fit's answers for single-node jobs, found
through an index of free GPUs per node; the gang plan for the others),
:class:`GangBackfill` (EASY backfill whose reservation may be a gang's),
:class:`GpuBestFit` (filter: the nodes with the best packing score, at most
SCORED_NODES of them, go on to the scorers), :class:`GpuPack` (the same as a score, for
profiles that want it weighed against others).
"""

from __future__ import annotations

import math
from collections import Counter

from llmos.kernel.resources import Allocation, NodeState, Request
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.framework import (
    OK,
    Code,
    Cycle,
    PendingJob,
    Reservation,
    RunningJob,
    Status,
    single_node_reason,
    spans_nodes,
)
from llmos.kernel.scheduler.profiles import Backfill, Fit, Nodes, Stage

Plan = list[tuple[NodeState, Request]]

# --- pure functions -------------------------------------------------------------------------


def largest_node_gpus(nodes: Nodes) -> int:
    return max((len(n.capacity.gpus) for n in nodes), default=0)


def is_multi_node(request: Request, nodes: Nodes) -> bool:
    """Whether the gang is larger than every one of ``nodes`` (by GPUs)."""
    return request.gpu > 1 and request.gpu > largest_node_gpus(nodes)


def part(request: Request, gpus: int) -> Request:
    """A gang's share on one node: ``gpus`` of its GPUs, cpu and memory in proportion."""
    share = gpus / request.gpu
    return Request(cpu=max(0.001, round(request.cpu * share, 3)),
                   memory_mb=max(1, math.ceil(request.memory_mb * share)), gpu=gpus,
                   gpu_memory_mb=request.gpu_memory_mb)


def gang_plan(request: Request, nodes: Nodes, free_of: dict[int, int] | None = None
              ) -> Plan | None:
    """Where a multi-node gang goes now: the fewest nodes (most free GPUs first), the last
    part on the node that fits it most tightly; None when the free GPUs do not add up.
    ``free_of``: each node's free GPU count by ``id(node)``, when the caller keeps one."""
    want, mem = request.gpu, request.gpu_memory_mb
    if free_of is None or mem:
        free = [(len(n.free_gpus(mem)), i, n) for i, n in enumerate(nodes)]
    else:
        free = [(free_of[id(n)], i, n) for i, n in enumerate(nodes)]
    free = sorted((f for f in free if f[0]), key=lambda f: (-f[0], f[1]))
    if sum(f[0] for f in free) < want:
        return None
    plan: Plan = []
    left = want
    pos = 0
    while left and pos < len(free):
        count, _, node = free[pos]
        pos += 1
        if count < left:
            piece = part(request, count)
            if node.fits(piece):
                plan.append((node, piece))
                left -= count
            continue
        # the last part: the tightest node with room for the rest
        for count2, _, node2 in sorted(free[pos - 1:], key=lambda f: (f[0], f[1])):
            piece = part(request, left)
            if count2 >= left and node2.fits(piece):
                plan.append((node2, piece))
                left = 0
                break
        else:
            return None
    return plan if not left else None


def gpu_demand(pending: list[PendingJob]) -> frozenset[int]:
    """The GPU counts pending jobs ask for (the free counts worth leaving on a node)."""
    return frozenset(j.request.gpu for j in pending if j.request.gpu)


GPU_PACK_WEIGHT = 4.0  # bin-pack's score lies in [-2, 0], spread's steps are 10


def gpu_pack_score(request: Request, node: NodeState, demand: frozenset[int],
                   free: int | None = None) -> float:
    """``free``: the node's free GPUs, when the caller knows them."""
    gpus = len(node.capacity.gpus)
    if free is None:
        free = len(node.free_gpus()) if gpus else 0
    return pack_score(request, free, gpus, bool(node.gpu_shared), demand)


def pack_score(request: Request, free: int, gpus: int, shared: bool,
               demand: frozenset[int]) -> float:
    """:func:`gpu_pack_score` of a node known by its free and total GPUs (and whether
    shares hold any of its GPUs)."""
    if not gpus:
        return 0.0 if (request.gpu or request.gpu_share_mb) else GPU_PACK_WEIGHT * 0.5
    if request.gpu:
        left = free - request.gpu
        bonus = 0.5 if (left == 0 or left in demand) else 0.0
        return GPU_PACK_WEIGHT * (bonus - left / gpus)
    if request.gpu_share_mb:
        return GPU_PACK_WEIGHT * (0.5 if shared else 0.0) - free / gpus
    return -GPU_PACK_WEIGHT * free / gpus  # a cpu-only job keeps off free GPUs


def reserve_gang(
    job: PendingJob, nodes: Nodes, running: list[RunningJob]
) -> tuple[Reservation, dict[str, NodeState], Plan | None]:
    """A multi-node gang's reservation: when (running jobs ending by their timeouts) its
    GPUs free up on ``nodes``, the node states then with the gang placed (only for the
    nodes that change: any other node then is as it is now), and its plan."""
    names = {n.name: n for n in nodes}
    futures: dict[str, NodeState] = {}  # copied when a job ending there frees room
    mem = job.request.gpu_memory_mb
    free = sum(len(n.free_gpus(mem)) for n in nodes)
    ends = sorted((r for r in running if any(a.node in names for a in r.allocations)),
                  key=lambda r: r.expected_end)
    at, plan, i = -math.inf, None, 0
    while True:
        if free >= job.request.gpu:
            plan = gang_plan(job.request, [futures.get(n.name, n) for n in nodes])
            if plan is not None:
                break
        if i == len(ends):
            break
        r = ends[i]
        i += 1
        for a in r.allocations:
            if a.node in names:
                future = futures.get(a.node)
                if future is None:
                    future = futures[a.node] = stages.copy_node(names[a.node])
                before = len(future.free_gpus(mem))
                future.release(a)
                free += len(future.free_gpus(mem)) - before
        at = r.expected_end
    if plan is None:
        return Reservation(job.id, nodes[0].name, math.inf), futures, None
    placed = []
    for node, piece in plan:
        if node.name not in futures:  # a node as it is now: place the part on a copy
            node = futures[node.name] = stages.copy_node(node)
        node.allocate(piece)
        placed.append((node, piece))
    return Reservation(job.id, plan[0][0].name, at), futures, placed


# --- stages -----------------------------------------------------------------------------------


GPU_INDEX = "gpu-index"  # Cycle.state key of the pass's _Index, for other stages to read


class _Index:
    """One pass's GPU index for :class:`GangFit`: each node's free whole GPUs (kept up to
    date as the pass reserves), the largest node per list of nodes, and a version that
    changes with every reservation (the gang plans' cache key)."""

    def __init__(self, nodes: Nodes):
        self.nodes = nodes
        self.free = {n.name: len(n.free_gpus()) for n in nodes}
        self.by_id = {id(n): self.free[n.name] for n in nodes}  # the same, by identity
        # (free GPUs, GPUs) by identity: what the packing score of a node depends on; and
        # how many nodes have each shape
        self.shape = {id(n): (self.free[n.name], len(n.capacity.gpus)) for n in nodes}
        self.shapes = Counter(self.shape.values())
        self.total = sum(self.free.values())  # free GPUs over ``nodes``
        self.largest: dict[int, int] = {}
        self.version = 0

    def free_over(self, nodes: Nodes) -> int:
        if nodes is self.nodes:
            return self.total
        by_id = self.by_id
        return sum(by_id[id(n)] for n in nodes)

    def largest_of(self, nodes: Nodes) -> int:
        found = self.largest.get(id(nodes))
        if found is None:
            found = self.largest[id(nodes)] = largest_node_gpus(nodes)
        return found

    def total_of(self, nodes: Nodes) -> int:
        """The GPUs of ``nodes`` together (capacity)."""
        found = self.largest.get(-id(nodes))
        if found is None:
            found = self.largest[-id(nodes)] = sum(len(n.capacity.gpus) for n in nodes)
        return found

    def changed(self, node: NodeState) -> None:
        now = len(node.free_gpus())
        self.total += now - self.free[node.name]
        self.free[node.name] = self.by_id[id(node)] = now
        shape = (now, len(node.capacity.gpus))
        self.shapes[self.shape[id(node)]] -= 1
        self.shapes[shape] += 1
        self.shape[id(node)] = shape
        self.version += 1


class GangFit(Fit):
    """Filter and reserve: :class:`Fit`'s answers (the same nodes, reasons and NEVERs) for
    jobs that fit one node, found faster at cluster scale (an index of free GPUs per node
    passes over nodes without enough; a reservation updates the remembered answers
    instead of forgetting them); for a gang larger than every node it may use (with
    ``multi_node``), the gang plan over several nodes, handed on as its leader alone
    (reserve takes every part, unreserve gives every part back)."""

    name = "gang-fit"

    def begin(self, cycle: Cycle) -> bool:
        super().begin(cycle)
        cycle.state[(self, "plans")] = {}  # job -> plan, while it goes through the stages
        cycle.state[(self, "index")] = None  # built at the first GPU job
        return True

    def _index(self, cycle: Cycle) -> _Index:
        index = cycle.state[(self, "index")]
        if index is None:
            index = cycle.state[(self, "index")] = cycle.state[GPU_INDEX] = _Index(cycle.nodes)
        return index

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        # Remembered answers, by the list of nodes and the request's fields: entries are
        # (nodes, status, request, first node asked) for one node, and (no nodes, WAIT,
        # request, None, "gang") for a gang that found no room.
        r = job.request
        spans = spans_nodes(cycle.config, job)
        key = (id(nodes), r.cpu, r.memory_mb, r.gpu, r.gpu_memory_mb, r.gpu_share_mb,
               spans and r.gpu > 1)
        cache = cycle.state[self]
        found = cache.get(key)
        if found is not None:
            return found[0], found[1]
        shared = nodes is cycle.nodes or id(nodes) in cycle.views
        if not r.gpu or not shared:
            if r.gpu > 1 and spans and is_multi_node(r, nodes):
                return self._gang(cycle, job, nodes, None)
            fitting, status = super().filter(cycle, job, nodes)
            if status.code is Code.NEVER and r.gpu > 1 and is_multi_node(r, nodes):
                status = Status.never(
                    f"{status.reason} ({single_node_reason(cycle.config, job)})")
            return fitting, status
        index = self._index(cycle)
        if r.gpu > 1 and spans and r.gpu > index.largest_of(nodes):
            found = self._gang(cycle, job, nodes, index)
            if not found[0] and found[1].code is Code.WAIT:
                cache[key] = (*found, r, None, "gang")
            return found
        free, want = index.by_id, r.gpu
        fitting = [n for n in nodes if free[id(n)] >= want and n.fits(r)]
        if fitting:
            found = (fitting, OK, r, None)
        else:  # Fit's answer: the first node's shortfall, or NEVER
            fitting, status = self._fit(cycle, job, nodes[:1] if nodes else nodes)
            if status.code is Code.NEVER and len(nodes) > 1:
                fitting, status = self._fit(cycle, job, nodes)
            if status.code is Code.NEVER and 1 < r.gpu > index.largest_of(nodes) and not spans:
                status = Status.never(
                    f"{status.reason} ({single_node_reason(cycle.config, job)})")
            found = (fitting, status, r, nodes[0] if nodes else None)
        cache[key] = found
        return found[0], found[1]

    def _gang(self, cycle: Cycle, job: PendingJob, nodes: Nodes,
              index: _Index | None) -> tuple[Nodes, Status]:
        r = job.request
        total = index.total_of(nodes) if index else sum(len(n.capacity.gpus) for n in nodes)
        if total < r.gpu:
            ever = sum(len(n.capacity.gpus) for n in cycle.nodes
                       if stages.has_labels(n, job.selector))
            why = f"needs {r.gpu} gpu, the ready nodes it may use have {total} together"
            return [], (Status.wait(why) if ever >= r.gpu else Status.never(
                f"needs {r.gpu} gpu, every node with its labels has {ever} together"))
        free = (index.free_over(nodes) if index
                else sum(len(n.free_gpus(r.gpu_memory_mb)) for n in nodes))
        plan = gang_plan(r, nodes, index.by_id if index else None) if free >= r.gpu else None
        if plan is None:
            return [], Status.wait(f"gang of {r.gpu} gpu over several nodes: {free} free")
        cycle.state[(self, "plans")][job.id] = plan
        return [plan[0][0]], OK

    def reserve(self, cycle: Cycle, job: PendingJob, node: NodeState) -> Status:
        plan = cycle.state[(self, "plans")].pop(job.id, None)
        if plan is None:
            alloc = node.allocate(job.request)
            allocs: tuple[Allocation, ...] = (alloc,)
        else:
            allocs = tuple(n.allocate(piece) for n, piece in plan)
        touched = [node] if plan is None else [n for n, _ in plan]
        cycle.allocations[job.id] = allocs[0]
        if allocs[1:]:
            cycle.extras[job.id] = allocs[1:]
        # as Fit: a job bound in this pass is no victim of a preemption in it
        cycle.running.append(RunningJob(job.id, allocs[0], job.priority, cycle.now,
                                        job.timeout_s, False, job.team, job.group,
                                        job.attained_s, allocs[1:]))
        self._touched(cycle, touched)
        return OK

    def _touched(self, cycle: Cycle, touched: Nodes) -> None:
        """Only these nodes lost room: drop them from the remembered answers where they no
        longer fit (an answer left without nodes is worked out again when asked)."""
        index = cycle.state[(self, "index")]
        # a remembered list holds exactly the nodes where its request fitted: a node that
        # had fewer free GPUs than the request asks for was never in it
        before = {}
        if index is not None:
            for n in touched:
                before[id(n)] = index.by_id[id(n)]
                index.changed(n)
        cache, ids = cycle.state[self], {id(t) for t in touched}
        for key in list(cache):
            entry = cache[key]
            if len(entry) != 4:  # Fit's own answers (cpu-only jobs), and gangs': forget
                del cache[key]
                continue
            fitting, status, request, first = entry
            if not fitting:  # still no room; its reason named the first node: redo then
                if first is not None and id(first) in ids:
                    del cache[key]
                continue
            kept = fitting
            for t in touched:  # few nodes, a long list (the same list when t is not in it)
                if before.get(id(t), math.inf) >= request.gpu and not t.fits(request):
                    kept = stages.without(kept, t)
            if kept is not fitting:
                if kept:
                    cache[key] = (kept, status, request, None)
                else:
                    del cache[key]

    def unreserve(self, cycle: Cycle, job: PendingJob) -> None:
        alloc = cycle.allocations.pop(job.id, None)
        if alloc is None:
            return
        by_name = {n.name: n for n in cycle.nodes}
        for a in (alloc, *cycle.extras.pop(job.id, ())):
            by_name[a.node].release(a)
        cycle.running = [r for r in cycle.running if r.allocation is not alloc]
        self.room_freed(cycle)

    def room_freed(self, cycle: Cycle) -> None:
        cycle.state[self].clear()
        cycle.state[(self, "index")] = None  # (built again at the next GPU job)
        cycle.state.pop(GPU_INDEX, None)


class GangBackfill(Backfill):
    """EASY backfill (:class:`Backfill`) whose reservation, for a gang larger than every
    node, spans the nodes its plan will take when enough running jobs have ended."""

    name = "gang-backfill"

    def post_filter(self, cycle: Cycle, job: PendingJob) -> bool:
        if cycle.out.reservation is not None:
            return False
        nodes = stages.eligible_nodes(job, cycle.nodes, cycle.running)
        if not nodes:
            return True
        if spans_nodes(cycle.config, job) and is_multi_node(job.request, nodes):
            reservation, futures, plan = reserve_gang(job, nodes, cycle.running)
            futures = self.keep(futures, plan)
        else:
            reservation, futures = self.reserve_one(job, nodes, cycle)
        self.hold(cycle, reservation, futures, job.team)
        return False

    @staticmethod
    def reserve_one(job: PendingJob, nodes: Nodes, cycle: Cycle):
        return stages.reserve(job, nodes, cycle.running)

    @staticmethod
    def keep(futures: dict[str, NodeState], plan: Plan | None) -> dict[str, NodeState]:
        """The node states a gang's reservation guards (here: every node's)."""
        return futures


SCORED_NODES = 16  # at most this many nodes of the best tier go on to the scorers


class GpuBestFit(Stage):
    """Filter: of the nodes a job fits, only those with the best GPU-packing score
    (:func:`gpu_pack_score`: the GPU job's best fit, leaving 0 or a pending GPU count free),
    and of those the first SCORED_NODES: the scorers then rank just those (as Kubernetes
    scores only a share of the feasible nodes on large clusters). A job with ``spread``
    keeps every node (spread outweighs packing)."""

    name = "gpu-best-fit"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = None  # the pending GPU counts, at the first job placed
        return True

    def filter(self, cycle: Cycle, job: PendingJob, nodes: Nodes) -> tuple[Nodes, Status]:
        if len(nodes) < 2 or (job.spread and job.group):
            return nodes, OK
        demand, r = cycle.state[self], job.request
        if demand is None:
            demand = cycle.state[self] = gpu_demand(cycle.pending)
        index = cycle.state.get(GPU_INDEX)
        if index is not None and not r.gpu_share_mb:
            best = _best_shapes(r, nodes, index, demand)
            if best:
                return best, OK
        scores = [gpu_pack_score(r, n, demand) for n in nodes]
        top = max(scores)
        best = [n for n, s in zip(nodes, scores) if s >= top]
        return best[:SCORED_NODES], OK


def _best_shapes(request: Request, nodes: Nodes, index: _Index,
                 demand: frozenset[int]) -> Nodes:
    """:class:`GpuBestFit`'s answer without scoring every node (it runs for every job
    placed): a node's score depends on its shape (free GPUs, GPUs) alone, so the shapes
    the pass's nodes have are scored and tried best first, each by a walk of ``nodes`` that
    stops at SCORED_NODES of that shape; the first shape found among ``nodes`` is the
    best one there. Empty when none is (the caller then scores every node)."""
    want = request.gpu
    scored = sorted(((pack_score(request, free, gpus, False, demand), (free, gpus))
                     for (free, gpus), count in index.shapes.items()
                     if count and free >= want), reverse=True)
    shape_of = index.shape
    i = 0
    while i < len(scored):
        top, good = scored[i][0], set()
        while i < len(scored) and scored[i][0] >= top:
            good.add(scored[i][1])
            i += 1
        best = []
        for n in nodes:
            if shape_of.get(id(n)) in good:
                best.append(n)
                if len(best) == SCORED_NODES:
                    break
        if best:
            return best
    return []


class GpuPack(Stage):
    """Score: GPU packing (:func:`gpu_pack_score`), knowing the GPU counts pending jobs ask
    for in this pass."""

    name = "gpu-pack"

    def begin(self, cycle: Cycle) -> bool:
        cycle.state[self] = gpu_demand(cycle.pending)
        return True

    def score(self, cycle: Cycle, job: PendingJob, node: NodeState) -> float:
        return gpu_pack_score(job.request, node, cycle.state[self])
