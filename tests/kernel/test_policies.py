"""The scheduling policies (kernel/scheduler/policies.py) and the GPU-aware stages, one pure
pass at a time: order, head-of-line blocking, Tiresias' queues, preemption and starvation
guard, gangs all or nothing, GPU packing, GPU shares by memory, team fair share, and the
llmos policy's aging both ways. No daemon, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llmos.kernel.resources import GPU, Allocation, NodeCapacity, NodeState, Request
from llmos.kernel.scheduler import PendingJob, RunningJob, SchedulerConfig, schedule
from llmos.kernel.scheduler.framework import nominate
from llmos.kernel.scheduler.history import MIN_JOBS, ServiceHistory
from llmos.kernel.scheduler.policies import POLICIES, policy

NOW = 100_000.0
LOW, NORMAL, HIGH = 0, 1, 2
GB = 1024


def gpu_node(name: str = "n1", gpus: int = 8, memory_mb: int = 40 * GB) -> NodeState:
    return NodeState(NodeCapacity(name, tuple(range(8 * gpus)), 64 * GB * gpus,
                                  tuple(GPU(i, "a100", memory_mb) for i in range(gpus))))


def job(i: int, gpus: int = 1, priority: int = NORMAL, queued: float = NOW, **kw) -> PendingJob:
    share = kw.pop("share_mb", 0)
    request = Request(cpu=gpus or 1, memory_mb=1024 * max(1, gpus), gpu=gpus,
                      gpu_share_mb=share)
    return PendingJob(i, request, priority, queued, **kw)


def hold(i: int, node: NodeState, gpus: int, started: float = NOW - 10, **kw) -> RunningJob:
    alloc = node.allocate(Request(cpu=gpus, memory_mb=1024 * gpus, gpu=gpus))
    return RunningJob(i, alloc, kw.pop("priority", NORMAL), started, **kw)


def bound(out) -> dict[int, str]:
    return {b.job_id: b.allocation.node for b in out.bindings}


def test_policy_names_and_unknown_name():
    assert set(POLICIES) == {"fifo", "sjf", "tiresias", "llmos-easy", "llmos"}
    assert all(policy(name).name == name for name in POLICIES)
    with pytest.raises(ValueError, match="known: fifo, sjf, tiresias, llmos-easy, llmos"):
        policy("yarn")


# --- fifo and sjf -----------------------------------------------------------------------------


def test_fifo_keeps_arrival_order_whatever_the_priority():
    n = gpu_node(gpus=2)
    pending = [job(3, priority=HIGH, queued=NOW - 1), job(1, priority=LOW, queued=NOW - 3),
               job(2, queued=NOW - 2)]
    assert list(bound(schedule(pending, [n], [], NOW, profile=policy("fifo")))) == [1, 2]
    # llmos-easy orders by priority class instead
    assert list(bound(schedule(pending, [n], [], NOW, profile=policy("llmos-easy")))) == [3, 2]


def test_fifo_head_blocks_everyone_behind_it_and_sjf_does_not():
    n = gpu_node(gpus=4)
    running = [hold(99, n, 2)]
    pending = [job(1, gpus=4, queued=NOW - 2, duration_s=50.0),
               job(2, gpus=1, queued=NOW - 1, duration_s=100.0)]
    out = schedule(pending, [n], running, NOW, profile=policy("fifo"))
    assert out.bindings == [] and out.preemptions == []
    assert out.reasons[2] == "waiting for job 1 at the head of the queue (fifo)"
    assert out.reasons[1] == "needs 4 gpu, 2 free"
    out = schedule(pending, [n], running, NOW, profile=policy("sjf"))
    assert bound(out) == {2: "n1"}  # skipped ahead: no reservation


def test_sjf_runs_the_shortest_known_job_first():
    n = gpu_node(gpus=1)
    pending = [job(1, queued=NOW - 3, duration_s=100.0), job(2, queued=NOW - 2, duration_s=10.0),
               job(3, queued=NOW - 1, duration_s=50.0)]
    assert bound(schedule(pending, [n], [], NOW, profile=policy("sjf"))) == {2: "n1"}


# --- tiresias ---------------------------------------------------------------------------------


def test_tiresias_serves_the_least_attained_queue_first_fifo_inside():
    n = gpu_node(gpus=1)
    pending = [job(1, queued=NOW - 30, attained_s=5000.0),  # queue 1 (over one GPU-hour)
               job(2, queued=NOW - 20), job(3, queued=NOW - 10)]  # queue 0, FIFO
    out = schedule(pending, [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {2: "n1"}


def test_tiresias_preempts_checkpointable_jobs_of_lower_queues_only():
    n = gpu_node(gpus=2)
    served = hold(10, n, 1, started=NOW - 4000, checkpointable=True)  # 4000 GPU-s: queue 1
    fresh = hold(11, n, 1, started=NOW - 100, checkpointable=True)  # queue 0
    out = schedule([job(1)], [n], [served, fresh], NOW, profile=policy("tiresias"))
    assert [(p.for_job, p.node, p.victims) for p in out.preemptions] == [(1, "n1", (10,))]
    stubborn = RunningJob(10, served.allocation, NORMAL, served.started_at)  # not checkpointable
    out = schedule([job(1)], [n], [stubborn, fresh], NOW, profile=policy("tiresias"))
    assert out.preemptions == []


def test_tiresias_counts_the_gpus_its_own_pass_gave_away_when_it_preempts():
    # n2 has one GPU free and two served jobs (queue 1) on the others; n1 is full with a
    # fresh job (queue 0: no victim). A 5-GPU gang first finds too few victims; a 1-GPU
    # job then takes n2's free GPU, and a 2-GPU job must preempt both served jobs. Were
    # n2's GPU counted as still free, one victim would seem enough, fail the exact check,
    # and the job would wait a pass for nothing.
    n1, n2 = gpu_node("n1", gpus=3), gpu_node("n2", gpus=3)
    fresh = hold(10, n1, 3, started=NOW - 100, checkpointable=True)  # 300 GPU-s: queue 0
    served = [hold(i, n2, 1, started=NOW - 4000, checkpointable=True) for i in (11, 12)]
    pending = [job(1, gpus=5, queued=NOW - 3), job(2, queued=NOW - 2),
               job(3, gpus=2, queued=NOW - 1)]
    out = schedule(pending, [n1, n2], [fresh, *served], NOW, profile=policy("tiresias"))
    assert bound(out) == {2: "n2"}
    assert [(p.for_job, p.node, p.victims) for p in out.preemptions] == [(3, "n2", (11, 12))]


def test_tiresias_counts_gpus_given_to_shares_when_no_whole_gpu_job_placed_before():
    # Only anti-affinity jobs and GPU shares go before the preempting job, so the pass
    # has no index of free GPUs: the free GPUs are counted on the node as it is now.
    x = NodeState(NodeCapacity("x", tuple(range(32)), 256 * GB,
                               tuple(GPU(i, "a100", 40 * GB) for i in range(4))))
    y = NodeState(NodeCapacity("y", tuple(range(8)), 64 * GB))
    big = RunningJob(90, x.allocate(Request(cpu=1, memory_mb=250 * GB)), NORMAL, NOW - 10)
    kept_apart = RunningJob(91, y.allocate(Request(cpu=1, memory_mb=GB)), NORMAL, NOW - 10,
                            group="g")
    served = [RunningJob(i, x.allocate(Request(cpu=1, memory_mb=GB, gpu=1)), NORMAL,
                         NOW - 4000, checkpointable=True) for i in (11, 12)]  # queue 1
    apart = {"group": "g", "anti_affinity": True}
    pending = [PendingJob(1, Request(cpu=1, memory_mb=8 * GB, gpu=1), NORMAL, NOW - 4, **apart),
               PendingJob(2, Request(cpu=0.5, memory_mb=GB, gpu_share_mb=30 * GB), NORMAL,
                          NOW - 3),
               PendingJob(3, Request(cpu=0.5, memory_mb=GB, gpu_share_mb=30 * GB), NORMAL,
                          NOW - 2),
               PendingJob(4, Request(cpu=1, memory_mb=GB, gpu=2), NORMAL, NOW - 1, **apart)]
    out = schedule(pending, [x, y], [big, kept_apart, *served], NOW, profile=policy("tiresias"))
    assert sorted(bound(out)) == [2, 3]  # the shares took x's two free GPUs
    assert [(p.for_job, p.node, p.victims) for p in out.preemptions] == [(4, "x", (11, 12))]


def test_tiresias_starvation_guard_puts_a_long_waiting_job_back_on_top():
    n = gpu_node(gpus=1)
    # Both in queue 1 (10,000 GPU-s). Job 1 ran 100 s since its last promotion: once it
    # has waited 10 x 100 s since then, its earlier waits included, it is promoted to
    # queue 0 and passes job 3, which waits longer but ran 1,000 s.
    older = job(3, queued=NOW - 2000, attained_s=10_000.0, ran_s=1000.0)
    starved = job(1, queued=NOW - 1001, attained_s=10_000.0, ran_s=100.0)
    out = schedule([starved, older], [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {1: "n1"} and out.promoted == [1]
    waiting = job(1, queued=NOW - 900, attained_s=10_000.0, ran_s=100.0)
    out = schedule([waiting, older], [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {3: "n1"} and out.promoted == []
    twice = job(1, queued=NOW - 500, attained_s=10_000.0, ran_s=100.0, waited_s=500.0)
    out = schedule([twice, older], [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {1: "n1"} and out.promoted == [1]
    # promoted, it joins queue 0 at its tail: a job already waiting there goes first
    newer = job(2, queued=NOW - 5)
    out = schedule([starved, newer], [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {2: "n1"} and out.promoted == [1]
    # queue 0 already: nothing to promote (its wait is what it is)
    top = job(1, queued=NOW - 5000, attained_s=100.0, ran_s=100.0)
    assert schedule([top], [n], [], NOW, profile=policy("tiresias")).promoted == []
    # promoted since, with nothing run: queue 0 by its service since then, and no guard
    promoted = job(1, queued=NOW - 300, attained_s=10_000.0, promoted_service_s=0.0)
    out = schedule([promoted, older], [n], [], NOW, profile=policy("tiresias"))
    assert bound(out) == {1: "n1"} and out.promoted == []


def test_a_promoted_tiresias_job_is_not_demoted_as_it_starts_again():
    """Its queue counts its service since the promotion: a job promoted after 10,000 GPU-s
    runs on in queue 0, which a newcomer of queue 0 cannot preempt; without a promotion
    it would be queue 1, and preempted."""
    n = gpu_node(gpus=1)
    newcomer = job(2, queued=NOW - 5)
    promoted = hold(1, n, 1, started=NOW - 600, checkpointable=True, attained_s=10_000.0,
                    promoted_service_s=0.0)
    out = schedule([newcomer], [n], [promoted], NOW, profile=policy("tiresias"))
    assert out.preemptions == []
    m = gpu_node(gpus=1)
    never = hold(1, m, 1, started=NOW - 600, checkpointable=True, attained_s=10_000.0)
    out = schedule([newcomer], [m], [never], NOW, profile=policy("tiresias"))
    assert [(p.for_job, p.victims) for p in out.preemptions] == [(2, (1,))]


# --- gangs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_gang_that_fits_one_node_never_splits(name):
    a, b = gpu_node("a", gpus=4), gpu_node("b", gpus=4)
    running = [hold(90, a, 2), hold(91, b, 2)]
    out = schedule([job(1, gpus=4)], [a, b], running, NOW, profile=policy(name))
    assert out.bindings == []  # 2 + 2 free, never a partial or split 4-GPU gang
    assert "needs 4 gpu, 2 free" in out.reasons[1]


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_gang_larger_than_every_node_spans_the_fewest_nodes(name):
    nodes = [gpu_node(f"n{i}") for i in range(4)]
    running = [hold(90, nodes[0], 4), hold(91, nodes[2], 4)]  # free: 4, 8, 4, 8
    out = schedule([job(1, gpus=12)], nodes, running, NOW, profile=policy(name))
    [b] = out.bindings
    parts = [(a.node, len(a.gpus)) for a in (b.allocation, *b.extra)]
    assert parts == [("n1", 8), ("n0", 4)]  # 2 nodes: a whole one, then the tightest fit
    assert sum(a.memory_mb for a in (b.allocation, *b.extra)) >= 12 * 1024


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_gang_over_nodes_is_all_or_nothing(name):
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    running = [hold(90, nodes[0], 4)]  # 12 free of 16
    out = schedule([job(1, gpus=16)], nodes, running, NOW, profile=policy(name))
    assert out.bindings == []
    assert out.reasons[1] == "gang of 16 gpu over several nodes: 12 free"


def test_without_multi_node_a_gang_larger_than_every_node_never_runs():
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    out = schedule([job(1, gpus=16)], nodes, [], NOW, SchedulerConfig(multi_node=False),
                   profile=policy("llmos"))
    assert out.bindings == []
    assert "needs 16 gpu, node n0 has 8" in out.reasons[1]
    assert "gang over several nodes is not run here" in out.reasons[1]


def test_a_running_gang_holds_and_frees_every_part():
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    out = schedule([job(1, gpus=16)], nodes, [], NOW, profile=policy("llmos"))
    [b] = out.bindings
    gang = RunningJob(1, b.allocation, NORMAL, NOW, extra=b.extra)
    for a in gang.allocations:
        next(n for n in nodes if n.name == a.node).take(a)
    assert gang.gpus == 16 and all(not n.free_gpus() for n in nodes)
    out = schedule([job(2, gpus=1)], nodes, [gang], NOW, profile=policy("llmos"))
    assert out.bindings == []


# --- packing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llmos", "tiresias", "sjf", "fifo"])
def test_packing_keeps_a_whole_node_free_for_an_8_gpu_gang(name):
    empty, half = gpu_node("a-empty"), gpu_node("b-half")
    running = [hold(90, half, 4)]
    pending = [job(1, gpus=2, queued=NOW - 2), job(2, gpus=8, queued=NOW - 1)]
    out = schedule(pending, [empty, half], running, NOW, profile=policy(name))
    assert bound(out) == {1: "b-half", 2: "a-empty"}


def test_packing_prefers_leaving_a_gpu_count_that_a_pending_job_asks_for():
    six, five = gpu_node("a-six-free"), gpu_node("b-five-free")
    running = [hold(90, six, 2), hold(91, five, 3)]
    # a 1-GPU job leaves 5 or 4 free; a pending 5-GPU job (waiting for another job) makes
    # leaving 5 the better
    one = job(1, gpus=1, queued=NOW - 2)
    five_later = job(3, gpus=5, queued=NOW, waiting_for=(77,))
    out = schedule([one, five_later], [six, five], running, NOW, profile=policy("llmos"))
    assert bound(out) == {1: "a-six-free"}
    out = schedule([one], [six, five], running, NOW, profile=policy("llmos"))
    assert bound(out) == {1: "b-five-free"}  # no demand for 5: the fullest node


# --- GPU shares by memory ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(POLICIES))
def test_two_20gb_shares_share_a_40gb_gpu_and_a_third_waits(name):
    n = gpu_node(gpus=1, memory_mb=40_000)
    pending = [job(i, gpus=0, share_mb=20_000, queued=NOW - 10 + i) for i in (1, 2, 3)]
    out = schedule(pending, [n], [], NOW, profile=policy(name))
    assert bound(out) == {1: "n1", 2: "n1"}
    assert [(b.allocation.gpus, b.allocation.gpu_share_mb) for b in out.bindings] == \
        [((0,), 20_000), ((0,), 20_000)]
    assert "needs a 20000 MB share of a gpu" in out.reasons[3]


def test_a_whole_gpu_job_never_gets_a_shared_gpu():
    n = gpu_node(gpus=2, memory_mb=40_000)
    share = n.allocate(Request(cpu=1, memory_mb=100, gpu_share_mb=10_000))
    assert n.free_gpus() == [1]
    whole = n.allocate(Request(cpu=1, memory_mb=100, gpu=1))
    assert whole.gpus == (1,) and share.gpus == (0,)
    running = [RunningJob(1, share, NORMAL, NOW), RunningJob(2, whole, NORMAL, NOW)]
    out = schedule([job(3, gpus=1)], [n], running, NOW, profile=policy("llmos"))
    assert out.bindings == [] and out.reasons[3] == "needs 1 gpu, 0 free"
    with pytest.raises(ValueError, match="shared"):
        n.take(Allocation("n1", {}, 0, (0,)))
    n.release(share)  # the last share leaves: the GPU is whole again
    assert n.free_gpus() == [0]
    assert Allocation.from_json(share.to_json()) == share


# --- fair share -------------------------------------------------------------------------------


def test_fair_share_lets_two_teams_take_turns():
    n = gpu_node(gpus=2)
    pending = ([job(i, team="a", queued=NOW - 100 + i) for i in range(1, 5)]
               + [job(i, team="b", queued=NOW - 50 + i) for i in (5, 6)])
    out = schedule(pending, [n], [], NOW, profile=policy("llmos"))
    assert bound(out) == {1: "n1", 5: "n1"}


def test_fair_share_favours_the_team_holding_less():
    busy, free = gpu_node("busy", gpus=2), gpu_node("free", gpus=1)
    running = [hold(90, busy, 2, team="a")]
    pending = [job(1, team="a", queued=NOW - 10), job(2, team="b", queued=NOW - 5)]
    out = schedule(pending, [busy, free], running, NOW, profile=policy("llmos"))
    assert bound(out) == {2: "free"}


# --- llmos: attained-service classes and aging, both ways -------------------------------------


def test_llmos_short_jobs_are_not_starved_by_long_ones():
    n = gpu_node(gpus=1)
    long_one = job(1, priority=HIGH, queued=NOW - 30, attained_s=200_000.0)
    fresh = job(2, priority=HIGH, queued=NOW - 1)
    assert bound(schedule([long_one, fresh], [n], [], NOW, SchedulerConfig(aging_s=60),
                          profile=policy("llmos"))) == {2: "n1"}


def test_llmos_long_jobs_are_not_starved_by_short_ones():
    n = gpu_node(gpus=1)
    fresh = job(2, priority=HIGH, queued=NOW - 1)
    config = SchedulerConfig(aging_s=60)
    # class 3 (>= 1e5 GPU-s); waiting 100 x aging_s lifts it 3 classes: FIFO with the fresh
    long_one = job(1, priority=HIGH, queued=NOW - 6000, attained_s=200_000.0)
    assert bound(schedule([long_one, fresh], [n], [], NOW, config,
                          profile=policy("llmos"))) == {1: "n1"}
    not_yet = job(1, priority=HIGH, queued=NOW - 3000, attained_s=200_000.0)
    assert bound(schedule([not_yet, fresh], [n], [], NOW, config,
                          profile=policy("llmos"))) == {2: "n1"}


def test_llmos_preempts_a_long_running_job_only_after_its_quantum():
    config = SchedulerConfig(aging_s=600)
    for ran, expected in ((100, []), (700, [(1, "n1", (10,))])):
        n = gpu_node(gpus=1)
        long_one = hold(10, n, 1, started=NOW - ran, checkpointable=True, attained_s=50_000.0)
        out = schedule([job(1)], [n], [long_one], NOW, config, profile=policy("llmos"))
        assert [(p.for_job, p.node, p.victims) for p in out.preemptions] == expected


def test_llmos_preempts_once_a_pass_for_the_first_blocked_job_that_has_victims():
    """Three jobs wait on a full node: the first may take no victim (it has received as
    much as the running jobs); the second takes the lowest-priority runner; the third
    waits for a later pass (one preemption a pass: preempting for every blocked job threw
    away the work of equal jobs again and again). The runner with a quantum or more of
    work unsaved is no victim of a job of its class."""
    config = SchedulerConfig(aging_s=600)
    n = gpu_node(gpus=3)
    running = [hold(10, n, 1, started=NOW - 5000, checkpointable=True, attained_s=50_000.0,
                    saved_at=NOW - 4000),
               hold(11, n, 1, started=NOW - 5000, checkpointable=True, priority=LOW),
               hold(12, n, 1, started=NOW - 5000, checkpointable=True, attained_s=50_000.0)]
    pending = [job(1, queued=NOW - 300, attained_s=60_000.0),
               job(2, queued=NOW - 200), job(3, queued=NOW - 100)]
    out = schedule(pending, [n], running, NOW, config, profile=policy("llmos"))
    assert [(p.for_job, p.victims) for p in out.preemptions] == [(2, (11,))]
    assert bound(out) == {}
    # the next pass, once 11 yielded: 12 for job 3, never 10
    n.release(running[1].allocation)
    out = schedule([pending[0], replace(pending[1], nominated="n1"), pending[2]], [n],
                   [running[0], running[2]], NOW + 30, config, profile=policy("llmos"))
    assert bound(out) == {2: "n1"}
    assert [(p.for_job, p.victims) for p in out.preemptions] == [(3, (12,))]


def test_llmos_preempts_behind_a_lifted_job_and_holds_the_freed_room_for_its_job():
    """A long job lifted by its wait heads the queue but may preempt nobody (no running job
    is expected to need more); the fresh job behind it preempts the long runner, and the
    GPU it frees goes to that fresh job at the next pass, not to the job ahead of it."""
    config = SchedulerConfig(aging_s=600)
    n = gpu_node(gpus=1)
    runner = hold(10, n, 1, started=NOW - 5000, checkpointable=True, attained_s=50_000.0)
    lifted = job(1, queued=NOW - 700, attained_s=50_000.0)  # aged: a priority class up
    fresh = job(2, queued=NOW - 10)
    out = schedule([lifted, fresh], [n], [runner], NOW, config, profile=policy("llmos"))
    assert [(p.for_job, p.node, p.victims) for p in out.preemptions] == [(2, "n1", (10,))]

    pending = {1: lifted, 2: fresh}
    nominate(pending, out.preemptions)  # as the daemon and the simulator do
    assert pending[2].nominated == "n1" and pending[1].nominated is None
    n.release(runner.allocation)  # the runner yielded
    out = schedule(list(pending.values()), [n], [], NOW + 30, config, profile=policy("llmos"))
    assert bound(out) == {2: "n1"}
    # without the hold, the job ahead takes what the preemption freed
    out = schedule([lifted, fresh], [n], [], NOW + 30, config, profile=policy("llmos"))
    assert bound(out) == {1: "n1"}

    # a job that cannot start at its turn (here: a dependency) holds the room for one
    # pass only, not for ever against the jobs ahead of it
    stuck = {1: lifted, 2: replace(fresh, nominated="n1", waiting_for=(99,))}
    out = schedule(list(stuck.values()), [n], [], NOW + 30, config, profile=policy("llmos"))
    assert bound(out) == {} and out.held == [2]
    nominate(stuck, [], out.held)
    assert stuck[2].nominated is None
    out = schedule(list(stuck.values()), [n], [], NOW + 60, config, profile=policy("llmos"))
    assert bound(out) == {1: "n1"}


def test_llmos_throws_away_at_most_a_quantum_of_a_victims_work_within_a_class():
    """A job of the waiting job's class is a victim while less than a quantum (600 s) of its
    work is unsaved (since its last checkpoint), and among victims the one losing least
    goes first; one of a lower class yields at once, however much it loses. A job that
    saves when asked to yield (``saved_at`` None, the daemon's) loses nothing."""
    config = SchedulerConfig(aging_s=600)

    def victims(*held: dict, waiting: PendingJob = job(1)) -> list:
        n = gpu_node(gpus=len(held))
        running = [hold(10 + k, n, 1, started=NOW - 5000, checkpointable=True,
                        attained_s=50_000.0, **kw) for k, kw in enumerate(held)]
        out = schedule([waiting], [n], running, NOW, config, profile=policy("llmos"))
        return [p.victims for p in out.preemptions]

    assert victims({"saved_at": NOW - 700}) == []
    assert victims({"saved_at": NOW - 600}) == []  # a whole quantum: too much
    assert victims({"saved_at": NOW - 500}) == [(10,)]
    assert victims({"saved_at": None}) == [(10,)]
    assert victims({"saved_at": NOW - 500}, {"saved_at": NOW - 20}) == [(11,)]
    assert victims({"saved_at": NOW - 4000, "priority": LOW}) == [(10,)]


@pytest.mark.parametrize("name", ["llmos", "llmos-easy"])
def test_waiting_never_justifies_preempting_a_job_of_the_same_class(name):
    """Aging lifts a waiting job in the queue, never over a running job of its own class:
    else two equal jobs preempt each other every aging_s and never progress. A job of a
    truly lower class still yields at once."""
    config = SchedulerConfig(aging_s=600)
    aged = job(1, queued=NOW - 5000)  # waited 8x aging_s: ranks one class up in the queue

    def preempted(waiting: PendingJob, **running) -> list:
        n = gpu_node(gpus=1)
        held = hold(10, n, 1, checkpointable=True, **running)
        out = schedule([waiting], [n], [held], NOW, config, profile=policy(name))
        return [p.victims for p in out.preemptions]

    # same nominal class, ran less than a quantum: never, whatever its attained service
    assert preempted(aged, started=NOW - 100, attained_s=50_000.0) == []
    # an aged low job does not preempt a normal one either
    assert preempted(replace(aged, priority=LOW), started=NOW - 5000) == []
    # a job of a lower class yields at once
    assert preempted(aged, started=NOW - 10, priority=LOW) == [(10,)]


def test_llmos_preempts_within_a_class_only_for_less_attained_service_after_a_quantum():
    config = SchedulerConfig(aging_s=600)
    for waiter_attained, expected in ((0.0, [(10,)]), (50_000.0, [])):
        n = gpu_node(gpus=1)
        running = hold(10, n, 1, started=NOW - 700, checkpointable=True, attained_s=50_000.0)
        # waited long (its queue rank is lifted): the wait is left out of the comparison
        waiter = job(1, queued=NOW - 50_000, attained_s=waiter_attained)
        out = schedule([waiter], [n], [running], NOW, config, profile=policy("llmos"))
        assert [p.victims for p in out.preemptions] == expected
    # llmos-easy never preempts within a class
    out = schedule([job(1, queued=NOW - 50_000)], [n], [running], NOW, config,
                   profile=policy("llmos-easy"))
    assert out.preemptions == []


def history_of(team: str, services) -> ServiceHistory:
    history = ServiceHistory()
    for service in services:
        history.add(team, service)
    return history


def test_the_history_estimates_remaining_service_from_a_teams_finished_jobs():
    history = history_of("sweep", [2000.0] * 30)
    assert history.remaining("sweep", 0.0) == 2000.0
    assert history.remaining("sweep", 1200.0) == 800.0
    assert history.remaining("sweep", 5000.0) == 5000.0  # past them all: as much again
    # a team with too few finished jobs has no estimate (plain LAS): none is borrowed
    # from another team, whose jobs cannot change it
    assert history.remaining("other-team", 0.0) is None
    assert history_of("t", [10.0] * (MIN_JOBS - 1)).remaining("t", 0.0) is None
    # heavy tail: most jobs end at once, a few run long; a job that ran long expects more
    tail = history_of("t", [100.0] * 25 + [1e6] * 5)
    assert tail.remaining("t", 5000.0) == 1e6 - 5000.0
    # only the last KEEP are remembered (the oldest go first)
    recent = ServiceHistory(keep=30)
    for service in [1e6] * 30 + [100.0] * 30:
        recent.add("t", service)
    assert recent.remaining("t", 0.0) == 100.0 and recent.jobs("t") == 30
    # a team's jobs without GPUs (cpu-seconds) are a history of their own
    recent.add("t", 5e5, gpu=False)
    assert recent.jobs("t", gpu=False) == 1 and recent.remaining("t", 0.0) == 100.0
    # a value that is not a number is no job's service
    for bad in (float("nan"), float("inf")):
        recent.add("t", bad)
    assert recent.remaining("t", 0.0) == 100.0


def test_another_teams_history_never_changes_a_teams_order():
    """Team b's ended jobs, however many and however long, leave team a's jobs ordered
    as before (a's own history, or plain LAS without one)."""
    llmos, config = policy("llmos"), SchedulerConfig(aging_s=600)
    pending = [job(1, team="a", queued=NOW - 100), job(2, team="a", queued=NOW - 10,
                                                        attained_s=1200.0)]
    for own in (None, [2000.0] * 30):
        history = history_of("a", own) if own else ServiceHistory()
        before = bound(schedule(pending, [gpu_node(gpus=1)], [], NOW, config, llmos, history))
        for service in [1e7] * 1000:
            history.add("b", service)
        after = bound(schedule(pending, [gpu_node(gpus=1)], [], NOW, config, llmos, history))
        assert before == after == ({2: "n1"} if own else {1: "n1"})


def test_llmos_spares_a_half_done_job_of_a_team_whose_jobs_are_all_alike():
    """A team's sweep of equal jobs: least attained service would preempt a job half done
    for a fresh one that needs twice as much (losing the victim's work since its last
    checkpoint); with the team's history the half-done job is the nearer to its end, so it
    keeps running, and once preempted it comes back before fresh jobs."""
    config, llmos = SchedulerConfig(aging_s=600), policy("llmos")
    sweep = history_of("a", [2000.0] * 30)
    for history, expected in ((None, [(10,)]), (sweep, [])):
        n = gpu_node(gpus=1)
        half_done = hold(10, n, 1, started=NOW - 1200, checkpointable=True, team="a")
        out = schedule([job(1, team="a")], [n], [half_done], NOW, config, llmos, history)
        assert [p.victims for p in out.preemptions] == expected
    fresh = job(1, team="a", queued=NOW - 100)
    resumed = job(2, team="a", queued=NOW - 10, attained_s=1200.0)
    assert bound(schedule([fresh, resumed], [gpu_node(gpus=1)], [], NOW, config, llmos)) \
        == {1: "n1"}  # least attained first, without a history
    assert bound(schedule([fresh, resumed], [gpu_node(gpus=1)], [], NOW, config, llmos,
                          sweep)) == {2: "n1"}


def test_llmos_still_preempts_a_long_runner_where_the_teams_jobs_are_heavy_tailed():
    config, llmos = SchedulerConfig(aging_s=600), policy("llmos")
    history = history_of("a", [100.0] * 25 + [50_000.0] * 5)
    n = gpu_node(gpus=1)
    runner = hold(10, n, 1, started=NOW - 5000, checkpointable=True, team="a")
    out = schedule([job(1, team="a")], [n], [runner], NOW, config, llmos, history)
    assert [p.victims for p in out.preemptions] == [(10,)]


def test_llmos_starvation_guard_lets_a_gang_that_waited_100_agings_take_a_node_back():
    """An 8-GPU gang that has received more than the small jobs holding the node: it may
    not preempt them (they are less served) until it has waited 100 x aging_s; then it
    counts as the least served and takes the node back."""
    config, llmos = SchedulerConfig(aging_s=600), policy("llmos")
    for waited, expected in ((59_000, []), (60_000, [(10, 11, 12, 13, 14, 15, 16, 17)])):
        n = gpu_node(gpus=8)
        small = [hold(10 + k, n, 1, started=NOW - 20_000, checkpointable=True)
                 for k in range(8)]
        gang = job(1, gpus=8, queued=NOW - waited, attained_s=8 * 30_000.0)
        out = schedule([gang], [n], small, NOW, config, llmos)
        assert [tuple(sorted(p.victims)) for p in out.preemptions] == expected


def test_a_gpu_share_accrues_service_as_its_fraction_of_the_gpu():
    n = gpu_node(gpus=2, memory_mb=40_000)
    share = n.allocate(Request(cpu=4, memory_mb=100, gpu_share_mb=10_000))
    whole = n.allocate(Request(cpu=4, memory_mb=100, gpu=1))
    cpu_only = n.allocate(Request(cpu=4, memory_mb=100))
    ran = NOW - 1000
    assert RunningJob(1, share, NORMAL, ran, gpu_memory_mb=40_000).service(NOW) == 250.0
    assert RunningJob(1, share, NORMAL, ran).service(NOW) == 1000.0  # memory unknown: 1 GPU
    assert RunningJob(2, whole, NORMAL, ran).service(NOW) == 1000.0
    assert RunningJob(3, cpu_only, NORMAL, ran).service(NOW) == 4000.0  # cpu-seconds


def test_llmos_backfill_reserves_one_node_and_others_stay_usable():
    a, b = gpu_node("a"), gpu_node("b")
    running = [hold(90, a, 4, timeout_s=100.0), hold(91, b, 6)]
    pending = [job(1, gpus=8, queued=NOW - 10), job(2, gpus=2, queued=NOW - 5)]
    out = schedule(pending, [a, b], running, NOW, profile=policy("llmos"))
    assert out.reservation.node == "a" and out.reservation.at == NOW - 10 + 100
    assert bound(out) == {2: "b"}  # not on the reserved node: it would delay job 1


def test_room_claimed_beside_the_reservation_is_not_given_twice():
    """Two equal jobs may outlive the reservation: the first takes the room the reserved
    job leaves free on its node; the second, asking the same, finds that room gone."""
    a, b = gpu_node("a"), gpu_node("b")
    running = [hold(90, a, 4, timeout_s=100.0), hold(91, b, 8)]
    pending = [job(1, gpus=6, queued=NOW - 10), job(2, gpus=2, queued=NOW - 5),
               job(3, gpus=2, queued=NOW - 4)]
    out = schedule(pending, [a, b], running, NOW, profile=policy("llmos"))
    assert out.reservation.node == "a"
    assert bound(out) == {2: "a"}
    assert out.reasons[3] == "waiting for job 1, which holds the reservation"


def test_yielding_a_gpu_share_frees_its_gpu_for_a_preemption():
    """A share's victim frees the GPU it shares: one victim on node a beats two on b."""
    def node(name: str, cores: int) -> NodeState:
        return NodeState(NodeCapacity(name, tuple(range(cores)), 64 * GB,
                                      tuple(GPU(i, "a100", 40 * GB) for i in range(2))))

    b, a = node("b", 2), node("a", 4)
    one = Request(cpu=1, memory_mb=GB, gpu=1)
    running = [RunningJob(1, b.allocate(one), LOW, NOW - 10, checkpointable=True),
               RunningJob(2, b.allocate(one), LOW, NOW - 10, checkpointable=True),
               RunningJob(3, a.allocate(Request(cpu=1, memory_mb=GB, gpu_share_mb=1000)),
                          LOW, NOW - 10, checkpointable=True, attained_s=1e6,
                          gpu_memory_mb=40 * GB),
               RunningJob(4, a.allocate(one), LOW, NOW - 10, checkpointable=True)]
    pending = [PendingJob(10, Request(cpu=2, memory_mb=GB, gpu=1), HIGH, NOW)]
    out = schedule(pending, [b, a], running, NOW, profile=policy("llmos"))
    assert [(p.node, p.victims) for p in out.preemptions] == [("a", (3,))]


# --- the daemon's attained service, from the stored transitions --------------------------------


def test_service_of_counts_the_gpu_seconds_of_ended_attempts(tmp_path):
    from datetime import timedelta

    from llmos.config import Settings
    from llmos.kernel.jobs import service_of
    from llmos.kernel.jobs import JobSpec, JobState, create_job, transition
    from llmos.store.db import Database

    db = Database(Settings(home=tmp_path).db_url)
    db.upgrade()
    with db.session() as s:
        job = create_job(s, JobSpec(program="noop", checkpointable=True),
                         Request(cpu=1, memory_mb=100, gpu=2), "local")
        # a share of a GPU (the GPU's memory unknown here) counts as one GPU, not 4 cpus
        share = create_job(s, JobSpec(program="noop", checkpointable=True),
                           Request(cpu=4, memory_mb=100, gpu_share_mb=4096), "local")
        steps = [(JobState.SCHEDULED, 10), (JobState.RUNNING, 11), (JobState.PREEMPTED, 111),
                 (JobState.PENDING, 111), (JobState.SCHEDULED, 200), (JobState.RUNNING, 201)]
        for each in (job, share):
            t0 = each.created_at
            for state, at in steps:  # ran 100 s, then started again (still running)
                transition(s, each, state, at=t0 + timedelta(seconds=at))
        s.flush()
        # 2 GPUs x 100 s; ran 100 s; waited 89 s once it had run (the wait going on and
        # the one before it first ran do not count); never promoted
        assert service_of(s, job) == (200.0, 100.0, 89.0, None)
        assert service_of(s, share) == (100.0, 100.0, 89.0, None)
        # Tiresias' counters restart at a promotion (at 150 s, while it waited)
        later = [(JobState.PREEMPTED, 251), (JobState.PENDING, 251), (JobState.SCHEDULED, 300),
                 (JobState.RUNNING, 301)]
        for state, at in later:  # ran 50 s more, waited 49 s, started again
            transition(s, job, state, at=job.created_at + timedelta(seconds=at))
        s.flush()
        assert service_of(s, job) == (300.0, 150.0, 138.0, None)
        job.promoted_at = job.created_at + timedelta(seconds=150)
        assert service_of(s, job) == (300.0, 50.0, 49.0, 100.0)
    db.engine.dispose()


def test_llmos_reservation_at_an_unknown_moment_lets_no_timeout_jump_it():
    a = gpu_node("a")
    running = [hold(90, a, 4)]  # no timeout: when job 1 can start is unknown
    pending = [job(1, gpus=8, queued=NOW - 10), job(2, gpus=2, queued=NOW - 5, timeout_s=60.0)]
    out = schedule(pending, [a], running, NOW, profile=policy("llmos"))
    assert out.reservation.node == "a" and out.bindings == []
    assert out.reasons[2] == "waiting for job 1, which holds the reservation"
    # llmos-easy lets it in: a timeout always "ends before" an unknown moment
    out = schedule(pending, [a], running, NOW, profile=policy("llmos-easy"))
    assert bound(out) == {2: "a"}


def test_a_waiting_job_learns_nothing_of_another_teams_job_from_its_reason():
    """Wait reasons are shown to the waiting job's team: another team's job is never named
    by its id (fifo's head, and the job holding the backfill reservation)."""
    n = gpu_node(gpus=4)
    running = [hold(99, n, 2, timeout_s=600.0)]
    pending = [job(1, gpus=4, queued=NOW - 2, team="alpha"),
               job(2, gpus=2, queued=NOW - 1, team="beta"),
               job(3, gpus=2, queued=NOW, team="alpha")]
    out = schedule(pending, [n], running, NOW, profile=policy("fifo"))
    assert out.reasons[2] == "waiting for a job of another team at the head of the queue (fifo)"
    assert out.reasons[3] == "waiting for job 1 at the head of the queue (fifo)"
    out = schedule(pending, [n], running, NOW, profile=policy("llmos-easy"))
    assert out.reasons[2] == "waiting for a job of another team, which holds the reservation"
    assert out.reasons[3] == "waiting for job 1, which holds the reservation"
