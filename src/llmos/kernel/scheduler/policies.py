"""Scheduling policies by name: each a :class:`Profile` of stages, run by the one pass
(:func:`llmos.kernel.scheduler.core.schedule`) that the daemon and the simulator both
call. ``policy(name)`` builds one; ``POLICIES`` lists the builders.

    fifo        strict arrival order; the first job that finds no room blocks everyone
                behind it (no backfill, no preemption, no classes)
    sjf         oracle: shortest ``duration_s`` first (only a simulator knows it: a lower
                bound, not deployable); greedy, work-conserving: a job that does not fit
                is skipped and later ones may start (no reservation, no preemption)
    tiresias    discretized 2D-LAS (NSDI'19): two queues by attained GPU-service split at
                one GPU-hour, FIFO inside a queue, greedy placement, preemption of
                checkpointable jobs of lower-priority queues, and the starvation guard (a
                job below the top queue that waited STARVE_LIMIT = 10x as long as it ran,
                both since its last promotion, goes back to the top queue, at its tail,
                with those counters and its queue's service reset, as in the paper's
                simulator);
                checkpoint and restore costs are the simulator's business
    llmos-easy  the daemon's profile until now, unchanged: priority classes with aging,
                EASY backfill from declared timeouts (the reservation guards every node),
                preemption of lower-class checkpointable jobs for the blocked head (by
                their classes as declared: waiting never lets a job preempt its own class);
                only addition: a gang larger than every node spans nodes (it was NEVER)
    llmos       the default, needs no durations: priority classes x service classes
                (decades of GPU-seconds) of what a job is expected to still need, learnt
                from its team's finished jobs (kernel/scheduler/history.py; what it
                received while its team has fewer than 20), lifted by waiting (one class
                per decade of waiting beyond aging_s) so neither short nor long jobs
                starve; teams in
                turn by dominant share inside a class (DRF, within quotas); EASY backfill
                where the head reserves ONE node (the one it can start on soonest; with
                no timeouts known, nothing jumps it there); one preemption a pass, for the
                first blocked job that has victims, the room they free held for it (as
                Kubernetes' nominated node): of a checkpointable
                job of a lower class at once (as llmos-easy), of its class but a higher
                service class only after it ran one quantum (aging_s) and while
                less than a quantum of its work is unsaved (since its last checkpoint); classes as
                declared and as served, never as lifted by waiting (else equal jobs would
                preempt each other every aging_s), except that a job that waited 100 x
                aging_s counts as the least served (the starvation guard); gangs and GPU
                packing (best-fit tier, then cpu/memory bin-pack)

The Tiresias constants (one GPU-hour, STARVE_LIMIT 10) and the llmos ones (decades of
GPU-seconds, aging_s) are round figures set before any trace was run, never fitted to one.

Every policy places gangs all or nothing (one node when they fit one node's size, the
fewest nodes otherwise), honours dependencies, quotas, labels and (anti-)affinity, and
fractional GPU shares (by memory) through the resource accounting.
"""

from __future__ import annotations

from collections.abc import Callable

from llmos.kernel.scheduler.framework import Profile
from llmos.kernel.scheduler.gang import GangBackfill, GangFit, GpuBestFit
from llmos.kernel.scheduler.profiles import (
    AntiAffinity,
    Binder,
    BinPack,
    Dependencies,
    NodeSelector,
    Spread,
    TeamQuota,
    default_profile,
)
from llmos.kernel.scheduler.queueing import (
    ArrivalOrder,
    HeadBlock,
    HeldRoom,
    LasAging,
    LasPreemption,
    LeastBlockingBackfill,
    ShortestFirst,
    TiresiasQueues,
)


def _greedy(name: str, queue_sort, post_filters=(), pre_filters=()) -> Profile:
    """A profile without reservations: the given order, gangs, packing."""
    fit, quota, apart, spread = GangFit(), TeamQuota(), AntiAffinity(), Spread()
    return Profile(
        name=name,
        queue_sort=queue_sort,
        bind=Binder(),
        pre_filters=(Dependencies(), quota, *pre_filters),
        filters=(NodeSelector(), apart, fit, GpuBestFit()),
        post_filters=tuple(post_filters),
        scores=(BinPack(), spread),
        reserves=(fit, quota, apart, spread),
    )


def fifo() -> Profile:
    head = HeadBlock()
    return _greedy("fifo", ArrivalOrder(), post_filters=(head,), pre_filters=(head,))


def sjf() -> Profile:
    return _greedy("sjf", ShortestFirst())


def tiresias() -> Profile:
    queues = TiresiasQueues()
    return _greedy("tiresias", queues, post_filters=(queues,))


def llmos_easy() -> Profile:
    """The default profile with the gang stages (multi-node gangs)."""
    return default_profile("llmos-easy", fit=GangFit, backfill=GangBackfill)


def llmos() -> Profile:
    fit, quota, backfill = GangFit(), TeamQuota(), LeastBlockingBackfill()
    apart, spread = AntiAffinity(), Spread()
    return Profile(
        name="llmos",
        queue_sort=LasAging(),
        bind=Binder(),
        pre_filters=(HeldRoom(fit), Dependencies(), quota),
        filters=(NodeSelector(), apart, fit, backfill, GpuBestFit()),
        post_filters=(backfill, LasPreemption()),
        scores=(BinPack(), spread),
        reserves=(fit, quota, backfill, apart, spread),
    )


POLICIES: dict[str, Callable[[], Profile]] = {
    "fifo": fifo,
    "sjf": sjf,
    "tiresias": tiresias,
    "llmos-easy": llmos_easy,
    "llmos": llmos,
}


def policy(name: str) -> Profile:
    """The profile of the policy called ``name``; ValueError naming the known ones."""
    try:
        build = POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheduler policy {name!r}; known: "
                         f"{', '.join(POLICIES)}") from None
    return build()
