"""One scheduling pass: run the stages over the queue and say what to start.

Pure: takes the pending and running jobs and the nodes' states, returns a
:class:`SchedulerOutput`. It works on copies, so the caller's node states are untouched
until it applies the bindings.

Backfill is EASY backfill: the first job that does not fit gets a reservation (the time
its resources free up, from running jobs' timeouts); a later job may start now only if
it cannot delay that reservation.
"""

from __future__ import annotations

from llmos.kernel.resources import NodeState
from llmos.kernel.scheduler import stages
from llmos.kernel.scheduler.framework import (
    Binding,
    PendingJob,
    RunningJob,
    SchedulerConfig,
    SchedulerOutput,
    Status,
)


def schedule(
    pending: list[PendingJob],
    nodes: list[NodeState],
    running: list[RunningJob],
    now: float,
    config: SchedulerConfig | None = None,
) -> SchedulerOutput:
    config = config or SchedulerConfig()
    out = SchedulerOutput()
    nodes = [stages._copy(n) for n in nodes]
    running = list(running)
    usage = stages.TeamUsage(running)
    futures: dict[str, NodeState] = {}
    # What fits depends only on the request and the nodes, which change only when a job
    # is bound: remember the answer per request until then (most queues repeat requests).
    fit_cache: dict = {}

    for job in stages.queue_order(pending, now, config):
        if job.waiting_for:
            out.reasons[job.id] = stages.dependencies(job)[1]
            continue
        if config.quotas:
            status, reason = stages.quota(job, usage, config)
            if status is Status.WAIT:
                out.reasons[job.id] = reason
                continue
        cached = fit_cache.get(job.request)
        if cached is None:
            cached = fit_cache[job.request] = stages.filter_nodes(job.request, nodes)
        fitting, reason = cached
        if not fitting and out.reservation is not None:
            out.reasons[job.id] = reason or "does not fit"
            continue

        if out.reservation is not None and fitting:
            fitting = [
                n for n in fitting
                if stages.backfill_allowed(job, n, now, out.reservation, futures)
            ]
            if not fitting:
                out.reasons[job.id] = (
                    f"waiting for job {out.reservation.job_id}, which holds the reservation"
                )
                continue
        if not fitting:
            out.reasons[job.id] = reason or "does not fit"
            if out.reservation is None:
                out.reservation, futures = stages.reserve(job, nodes, running)
                victims = stages.preemption(job, nodes, running, now, config)
                if victims is not None:
                    out.preemptions.append(victims)
            continue

        node = stages.pick_node(job.request, fitting)
        if out.reservation is not None:
            stages.claim_future_room(job, node, now, out.reservation, futures)
        allocation = node.allocate(job.request)
        out.bindings.append(Binding(job.id, allocation, backfilled=out.reservation is not None))
        usage.add(job.team, sum(allocation.cores.values()), allocation.memory_mb,
                  len(allocation.gpus))
        running.append(RunningJob(job.id, allocation, job.priority, now, job.timeout_s,
                                  team=job.team))
        fit_cache.clear()
    return out
