"""Choosing preemption victims, shared by the policies that preempt (:mod:`.queueing`):
the fewest running jobs whose yielding lets a waiting job start, on one node, or for a
gang larger than every node over several; :class:`VictimIndex` does it for every blocked
job of a pass."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from llmos.kernel.resources import Allocation, NodeState
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.framework import Cycle, PendingJob, Preemption, RunningJob
from llmos.kernel.scheduler.gang import GPU_INDEX, gang_plan, is_multi_node, largest_node_gpus

Nodes = list[NodeState]


def choose_victims(
    job: PendingJob, nodes: Nodes, candidates: list[RunningJob],
    key: Callable[[RunningJob], tuple], multi: bool = True,
) -> list[Preemption] | None:
    """The fewest ``candidates`` whose yielding lets ``job`` start: on one node (the node
    needing the fewest, candidates in ``key`` order), or for a gang larger than every node
    over several (in ``key`` order until its plan fits). One Preemption per node."""
    if not nodes or not candidates:
        return None
    names = {n.name: n for n in nodes}
    on_node: dict[str, list[RunningJob]] = defaultdict(list)
    for r in candidates:
        for a in r.allocations:
            if a.node in names:
                on_node[a.node].append(r)
    if multi and is_multi_node(job.request, nodes):
        return victims_over_nodes(job, nodes, candidates, key, names)
    best: tuple[int, str, list[int]] | None = None
    want = job.request.gpu
    for name, here in on_node.items():
        here = sorted(here, key=key)
        if want:  # counted in GPUs first (cheap): at least this many must yield here
            # each victim frees at most the GPUs it holds here, whole or by a share
            have, least = len(names[name].free_gpus()), 0
            for r in here:
                if have >= want:
                    break
                have += sum(len(a.gpus) for a in r.allocations if a.node == name)
                least += 1
            if have < want or (best is not None and least >= best[0]):
                continue  # not enough GPUs here, or no fewer victims than the best
        future = stages.copy_node(names[name])
        victims: list[int] = []
        for r in here:
            if future.fits(job.request):
                break
            for a in r.allocations:
                if a.node == name:
                    future.release(a)
            victims.append(r.id)
        if victims and future.fits(job.request) and (best is None or len(victims) < best[0]):
            best = (len(victims), name, victims)
            if len(victims) == 1:
                break  # none can do with fewer
    if best is None:
        return None
    return [Preemption(job.id, best[1], tuple(best[2]))]


def victims_over_nodes(job, nodes, candidates, key, names) -> list[Preemption] | None:
    """Victims in ``key`` order until a multi-node gang's plan fits (GPUs counted per node,
    the plan tried only when they add up)."""
    want, mem = job.request.gpu, job.request.gpu_memory_mb
    counts = {id(n): len(n.free_gpus(mem)) for n in nodes}
    free = sum(counts.values())
    if free + sum(r.gpus for r in candidates) < want:
        return None
    copies: dict[str, NodeState] = {}  # the nodes a victim yields on, copied when touched

    def plan_now():
        view = [copies.get(n.name, n) for n in nodes]
        return gang_plan(job.request, view, None if mem else
                         {id(v): counts[id(n)] for v, n in zip(view, nodes)})

    chosen: list[RunningJob] = []
    plan = None
    for r in sorted(candidates, key=key):
        if free >= want:
            plan = plan_now()
            if plan is not None:
                break
        held = [a for a in r.allocations if a.node in names]
        if not held:
            continue
        for a in held:
            if a.node not in copies:
                copies[a.node] = stages.copy_node(names[a.node])
            future = copies[a.node]
            future.release(a)
            now_free = len(future.free_gpus(mem))
            key = id(names[a.node])
            free += now_free - counts[key]
            counts[key] = now_free
        chosen.append(r)
    if plan is None and free >= want:
        plan = plan_now()
    if not chosen or plan is None:
        return None
    grouped: dict[str, list[int]] = defaultdict(list)
    for r in chosen:
        grouped[r.allocation.node].append(r.id)
    return [Preemption(job.id, node, tuple(ids)) for node, ids in grouped.items()]


class VictimIndex:
    """The running jobs one pass may preempt, for a policy that looks for victims for many
    of the jobs that find no room (thousands in a busy pass): ``tiresias`` preempts for
    every one, ``llmos`` for the first that has victims. Each victim has a level: a job
    may take it only when the victim's level is above the job's own (``mine``); victims
    are taken in ``key`` order. What one job takes is gone for the jobs after it.

    Fast because: the victims on each node are sorted once a pass; the node needing the
    fewest is found by counting GPUs (a victim's GPUs, whole or shared, as
    :func:`choose_victims` counts them: at most what it frees), then checked exactly; and a
    job no smaller than one that found no victims, at a level no lower, with the same
    nodes, finds none either (in a pass the victims and the free room only shrink; a room
    held for a job and given back at its turn, :class:`~.queueing.HeldRoom`, aside: there
    the memo errs towards not preempting)."""

    def __init__(self, cycle: Cycle, pool: dict[int, RunningJob], level: dict, key):
        self.pool, self.level, self.key = pool, level, key
        self.top = max((level[i] for i in pool), default=None)
        self._failed: list[tuple] = []  # (level, size) of plain jobs that found none
        self._nodes: Nodes | None = None  # the eligible nodes of a plain job
        self._largest = 0
        self._on_node: dict[str, list[tuple[RunningJob, Allocation]]] | None = None

    def above(self, mine) -> bool:
        """Whether any victim left may be taken by a job of level ``mine``."""
        return bool(self.pool) and self.top > mine

    def take_for(self, cycle: Cycle, job: PendingJob, mine, multi: bool) -> list[Preemption] | None:
        """The preemptions that let ``job`` (of level ``mine``) start, their victims taken
        out of the index; None when there are none. ``multi``: a gang larger than every
        node may span nodes."""
        request = job.request
        size = (request.gpu, request.millicores, request.memory_mb)
        plain = not (job.selector or job.anti_affinity)  # the pass's shared node list
        if plain:
            if any(lv <= mine and all(x >= y for x, y in zip(size, least))
                   for lv, least in self._failed):
                return None
            if self._nodes is None:
                self._nodes = stages.eligible_nodes(job, cycle.nodes, cycle.running)
                self._largest = largest_node_gpus(self._nodes)
            nodes, largest = self._nodes, self._largest
        else:
            nodes = stages.eligible_nodes(job, cycle.nodes, cycle.running)
            largest = largest_node_gpus(nodes)
        if not nodes:
            return None
        if multi and 1 < request.gpu > largest:
            plans = victims_over_nodes(job, nodes, self._above(mine), self.key,
                                       {n.name: n for n in nodes})
        else:
            plans = self._on_one_node(cycle, job, nodes, mine)
        if not plans:
            if plain:  # (kept minimal: each blocked job of a pass checks it)
                self._failed = [(lv, least) for lv, least in self._failed
                                if not (lv >= mine and all(x >= y for x, y in zip(least, size)))]
                self._failed.append((mine, size))
            return None
        for plan in plans:
            for victim in plan.victims:
                self._take(victim)
        return plans

    def _above(self, mine) -> list[RunningJob]:
        level = self.level
        return [r for r in self.pool.values() if level[r.id] > mine]

    def _index(self, cycle: Cycle) -> None:
        on_node = self._on_node = defaultdict(list)
        for r in sorted(self.pool.values(), key=self.key):
            for a in r.allocations:
                on_node[a.node].append((r, a))
        self._by_name = {n.name: n for n in cycle.nodes}
        self._left = {name: sum(len(a.gpus) for _, a in here) for name, here in on_node.items()}
        # the most GPUs one victim holds there (stays an upper bound as victims go)
        self._most = {name: max(1, max(len(a.gpus) for _, a in here))
                      for name, here in on_node.items()}

    def _take(self, victim: int) -> None:
        r = self.pool.pop(victim, None)
        if r is None or self._on_node is None:
            return
        for a in r.allocations:  # a later job's search skips it, and a node with none left
            if a.node in self._left:
                self._left[a.node] -= len(a.gpus)
                here = [ra for ra in self._on_node.get(a.node, ()) if ra[0] is not r]
                if here:
                    self._on_node[a.node] = here
                else:
                    self._on_node.pop(a.node, None)

    def _on_one_node(self, cycle: Cycle, job: PendingJob, nodes: Nodes,
                     mine) -> list[Preemption] | None:
        if self._on_node is None:
            self._index(cycle)
        pool, level = self.pool, self.level
        by_name, want, left, most = self._by_name, job.request.gpu, self._left, self._most
        # free GPUs per node as the pass binds jobs: the gang index's, else counted
        index = cycle.state.get(GPU_INDEX)
        free = index.free if index is not None else None
        allowed = {n.name for n in nodes} if len(nodes) != len(cycle.nodes) else None
        best = None
        for name, here in self._on_node.items():
            if allowed is not None and name not in allowed:
                continue
            node = by_name[name]
            have = free[name] if free is not None else len(node.free_gpus())
            if want and left[name] + have < want:
                continue  # not enough here even if every victim yielded
            if best is not None and -(-(want - have) // most[name]) >= len(best[1]):
                continue  # needs at least as many victims as the best
            picked = []
            for r, a in here:
                if r.id in pool and level[r.id] > mine:
                    have += len(a.gpus)
                    picked.append((r, a))
                    if have >= want:
                        break
            if not picked or have < want or (best is not None and len(picked) >= len(best[1])):
                continue
            future = stages.copy_node(node)
            for _, a in picked:
                future.release(a)
            if future.fits(job.request):
                best = (name, picked)
                if len(picked) == 1:
                    break
        if best is None:
            if want:
                return None
            return choose_victims(job, nodes, self._above(mine), key=self.key, multi=False)
        return [Preemption(job.id, best[0], tuple(r.id for r, _ in best[1]))]
