"""The queue orders worked out as columns (kernel/scheduler/columns.py, numpy) give exactly
the order their scalar rules define, job by job: llmos' rank with its fair-share start,
Tiresias' queues. Random queues with the edges that matter: exact decades of waiting and
of service, equal arrival times, teams with and without a history, GPU shares, jobs
without GPUs, several priorities."""

from __future__ import annotations

import math
import random

import pytest

from llmos.kernel.resources import NodeState, Request
from llmos.kernel.scheduler.framework import Cycle, PendingJob, RunningJob, SchedulerConfig
from llmos.kernel.scheduler.history import ServiceHistory
from llmos.kernel.scheduler.queueing import (
    LasAging,
    TiresiasQueues,
    llmos_rank,
    team_shares,
    starved,
    tiresias_pending_queue,
    waiting_lift,
)
from llmos.kernel.scheduler.sim import from_flags

NOW = 1_000_000.0
TEAMS = [None, "a", "b", "c"]


def queue(rng: random.Random, n: int, aging: float) -> list[PendingJob]:
    waits = [0.0, aging, 10 * aging, 100 * aging, aging - 1e-9, 10 * aging * (1 + 1e-15)]
    services = [0.0, 0.0, 1e3, 1e4, 1e5, 3600.0, 999.999, 5e4]
    jobs = []
    for i in range(n):
        kind = rng.random()
        if kind < 0.1:
            request = Request(cpu=2, memory_mb=4096)  # no GPU
        elif kind < 0.2:
            request = Request(cpu=1, memory_mb=2048, gpu_share_mb=rng.choice([4000, 20000]))
        else:
            g = rng.choice([1, 1, 1, 2, 4, 8])
            request = Request(cpu=4 * g, memory_mb=16384 * g, gpu=g)
        waited = rng.choice(waits) if rng.random() < 0.4 else rng.uniform(0, 2e5)
        if rng.random() < 0.2 and jobs:  # the same arrival time as another job
            queued = jobs[-1].queued_at
        else:
            queued = NOW - waited
        attained = rng.choice(services) if rng.random() < 0.6 else rng.uniform(0, 2e5)
        ran = rng.choice([0.0, 0.0, 30.0, 600.0])
        jobs.append(PendingJob(10_000 - i, request, rng.choice([0, 1, 1, 2]), queued,
                               team=rng.choice(TEAMS), attained_s=attained, ran_s=ran,
                               waited_s=rng.choice([0.0, 0.0, 200.0, 5000.0]) if ran else 0.0,
                               promoted_service_s=rng.choice([None, None, 0.0, 5000.0])))
    rng.shuffle(jobs)
    return jobs


def cycle_for(jobs: list[PendingJob], history, rng: random.Random) -> Cycle:
    nodes = [NodeState(c) for c in from_flags(6).capacities()]
    running = []
    for i, node in enumerate(nodes[:4]):  # some teams hold GPUs: their shares start above 0
        for k in range(rng.randint(1, 5)):
            alloc = node.allocate(Request(cpu=4, memory_mb=16384, gpu=1))
            running.append(RunningJob(i * 10 + k, alloc, 1, NOW - 500, team=TEAMS[k % 4]))
    return Cycle(NOW, SchedulerConfig(), nodes, running, pending=jobs, history=history)


def scalar_llmos_order(jobs: list[PendingJob], cycle: Cycle) -> list[PendingJob]:
    """LasAging's rule, one job at a time: llmos_rank, then the team's share at the start
    of the pass plus the dominant shares of its jobs before it in the rank, then arrival."""
    cfg = cycle.config
    (cpu_t, mem_t, gpu_t), shares = team_shares(cycle)
    fifo = sorted(jobs, key=lambda j: (j.queued_at, j.id))
    acc, keyed = {}, []
    for n, j in enumerate(fifo):
        rank = llmos_rank(j, cycle.now, cfg.aging_s, cfg.max_rank, cycle.history)
        start = acc.get((rank, j.team), shares.get(j.team, 0.0))
        r = j.request
        acc[(rank, j.team)] = start + max(r.cpu / cpu_t, r.memory_mb / mem_t,
                                          r.gpu / (gpu_t or math.inf))
        keyed.append((rank, start, n))
    return [fifo[k[2]] for k in sorted(keyed)]


def history() -> ServiceHistory:
    h = ServiceHistory()
    rng = random.Random(7)
    for _ in range(40):
        h.add("a", rng.choice([500.0, 2e3, 4e4, 3e5]), gpu=True)
    for _ in range(25):
        h.add("b", rng.choice([100.0, 9e3]), gpu=False)
    for _ in range(5):  # too few: no estimate for c
        h.add("c", 1e4, gpu=True)
    return h


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("with_history", [False, True])
def test_llmos_order_as_columns_is_its_rule_job_by_job(seed, with_history):
    rng = random.Random(seed)
    jobs = queue(rng, 400, SchedulerConfig().aging_s)
    cycle = cycle_for(jobs, history() if with_history else None, rng)
    got = [j.id for j in LasAging().order(jobs, cycle)]
    assert got == [j.id for j in scalar_llmos_order(jobs, cycle)]


@pytest.mark.parametrize("seed", range(6))
def test_tiresias_order_as_columns_is_its_rule_job_by_job(seed):
    rng = random.Random(seed)
    jobs = queue(rng, 400, 3600.0)
    cycle = cycle_for(jobs, None, rng)
    got = [j.id for j in TiresiasQueues().order(jobs, cycle)]
    # a promoted job joins the top queue at its tail: as if queued now
    want = sorted(jobs, key=lambda j: (tiresias_pending_queue(j, NOW),
                                       NOW if starved(j, NOW) else j.queued_at, j.id))
    assert got == [j.id for j in want]
    # the jobs the starvation guard promotes now, as its rule says job by job
    assert sorted(cycle.out.promoted) == sorted(j.id for j in jobs if starved(j, NOW))
    assert cycle.out.promoted  # the random queues hold some


def test_orders_of_an_empty_and_a_one_job_queue():
    job = PendingJob(1, Request(gpu=1), 1, NOW)
    for stage in (LasAging(), TiresiasQueues()):
        assert stage.order([], cycle_for([], None, random.Random(0))) == []
        assert stage.order([job], cycle_for([job], None, random.Random(0))) == [job]


def test_a_wait_lifts_one_class_at_aging_and_one_more_at_each_decade_exactly():
    assert [waiting_lift(w, 600.0) for w in (599.999, 600.0, 5999.999, 6000.0, 60000.0,
                                             600000.0)] == [0, 1, 1, 2, 3, 4]
