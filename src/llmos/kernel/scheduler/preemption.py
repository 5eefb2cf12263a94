"""Choosing preemption victims, shared by the policies that preempt (:mod:`.queueing`):
the fewest running jobs whose yielding lets a waiting job start, on one node, or for a
gang larger than every node over several."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from llmos.kernel.resources import NodeState
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.framework import PendingJob, Preemption, RunningJob
from llmos.kernel.scheduler.gang import gang_plan, is_multi_node

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
