"""Scheduler stages (pure functions and the stage objects a profile lists) and resource
accounting: no daemon, no clock."""

from __future__ import annotations

import dataclasses
import math

import pytest

from llmos.kernel.resources import (
    GPU,
    Allocation,
    NodeCapacity,
    NodeState,
    Request,
    too_large_reason,
)
from llmos.kernel.scheduler import (
    DEFAULT_PROFILE,
    OK,
    Code,
    Cycle,
    PendingJob,
    Profile,
    Quota,
    Reservation,
    RunningJob,
    SchedulerConfig,
    Stage,
    Status,
    schedule,
    stages,
)
from llmos.kernel.scheduler import Preemption as ScheduledPreemption
from llmos.kernel.scheduler.profiles import (
    Backfill,
    BinPack,
    Binder,
    Dependencies,
    Fit,
    Preemption,
    PriorityAging,
    TeamQuota,
)

NOW = 10_000.0
LOW, NORMAL, HIGH = 0, 1, 2


def node(cores: int = 2, memory_mb: int = 8000, gpus=()) -> NodeState:
    return NodeState(NodeCapacity("n1", tuple(range(cores)), memory_mb, tuple(gpus)))


def job(i: int, cpu: float = 1, priority: int = NORMAL, queued: float = NOW, **kw) -> PendingJob:
    return PendingJob(i, Request(cpu=cpu, memory_mb=kw.pop("memory_mb", 100)), priority, queued,
                      **kw)


def running(i: int, state: NodeState, cpu: float = 1, priority: int = NORMAL,
            timeout: float | None = None, checkpointable: bool = False,
            started: float = NOW - 10, team: str | None = None) -> RunningJob:
    alloc = state.allocate(Request(cpu=cpu, memory_mb=100))
    return RunningJob(i, alloc, priority, started, timeout, checkpointable, team)


# -- resources ------------------------------------------------------------------------------


def test_fractions_share_a_core_and_whole_cores_stay_free():
    n = node(cores=2)
    a = n.allocate(Request(cpu=0.5, memory_mb=10))
    b = n.allocate(Request(cpu=0.5, memory_mb=10))
    assert list(a.cores) == list(b.cores)  # packed on one core
    whole = n.allocate(Request(cpu=1, memory_mb=10))
    assert set(whole.cores).isdisjoint(a.cores)
    assert n.free_millicores == 0


def test_a_fraction_may_span_partly_used_cores():
    n = node(cores=2)
    for _ in range(4):
        n.allocate(Request(cpu=0.4, memory_mb=10))
    last = n.allocate(Request(cpu=0.4, memory_mb=10))
    assert sorted(last.cores.values()) == [200, 200]


def test_nothing_is_ever_oversubscribed():
    n = node(cores=2, memory_mb=1000)
    n.allocate(Request(cpu=2, memory_mb=500))
    assert n.shortfall(Request(cpu=1, memory_mb=10)) == "needs 1 cpu, 0 free"
    with pytest.raises(ValueError):
        n.allocate(Request(cpu=1, memory_mb=10))
    with pytest.raises(ValueError):
        n.take(Allocation("n1", {0: 1000}, 10))


def test_release_gives_everything_back():
    n = node()
    alloc = n.allocate(Request(cpu=1.5, memory_mb=700))
    n.release(alloc)
    assert n.free_millicores == 2000 and n.free_memory_mb == 8000


def test_releasing_a_job_from_a_node_that_shrank_under_it_frees_what_is_left():
    """A node re-counted smaller (as Ray reports a dead node: no cores) while a job held
    cores it no longer has: ending that job must not fail the daemon's loop."""
    before = node(cores=4)
    alloc = before.allocate(Request(cpu=3, memory_mb=700))
    after = node(cores=1)
    after.release(alloc)  # core 0 is still there: it had nothing taken, nothing goes below 0
    assert after.free_millicores == 1000 and after.free_memory_mb == 8000
    shrunk = node(cores=0)
    shrunk.release(alloc)
    assert shrunk.free_millicores == 0


def test_gpus_are_whole_and_filtered_by_memory():
    n = node(gpus=[GPU(0, "small", 8000), GPU(1, "big", 80000)])
    alloc = n.allocate(Request(cpu=1, memory_mb=10, gpu=1, gpu_memory_mb=40000))
    assert alloc.gpus == (1,)
    assert n.shortfall(Request(cpu=1, memory_mb=10, gpu=1, gpu_memory_mb=40000)) == \
        "needs 1 gpu, 0 free"


@pytest.mark.parametrize("request_,message", [
    (Request(cpu=3), "needs 3 cpu, node n1 has 2"),
    (Request(memory_mb=10**6), "needs 1000000 MB memory"),
    (Request(gpu=1), "needs 1 gpu, node n1 has 0"),
    (Request(gpu_memory_mb=5), "gpu_memory_mb needs gpu >= 1"),
])
def test_requests_larger_than_any_node_are_named(request_, message):
    assert message in too_large_reason(request_, [node().capacity])


def test_allocation_round_trips_through_json():
    alloc = Allocation("n1", {0: 1000, 1: 250}, 512, (3,))
    assert Allocation.from_json(alloc.to_json()) == alloc


# -- queue order and aging -----------------------------------------------------------------


def test_high_priority_is_bound_before_50_older_low_jobs():
    queue = [job(i, priority=LOW, queued=NOW - 100 + i) for i in range(1, 51)]
    queue.append(job(99, priority=HIGH))
    out = schedule(queue, [node(cores=1)], [], NOW)
    assert [b.job_id for b in out.bindings] == [99]


def test_fifo_inside_a_class():
    queue = [job(3, queued=NOW - 1), job(1, queued=NOW - 3), job(2, queued=NOW - 2)]
    assert [j.id for j in stages.queue_order(queue, NOW, SchedulerConfig())] == [1, 2, 3]


def test_aging_lifts_a_long_waiting_job_one_class_but_not_past_high():
    config = SchedulerConfig(aging_s=60)
    old_low = job(1, priority=LOW, queued=NOW - 61)
    new_normal = job(2, priority=NORMAL, queued=NOW - 1)
    high = job(3, priority=HIGH, queued=NOW)
    ancient = job(4, priority=LOW, queued=NOW - 10_000)
    order = [j.id for j in stages.queue_order([new_normal, old_low, high, ancient], NOW, config)]
    assert order == [3, 4, 1, 2]  # aged lows rank as normal, oldest first; high stays first
    assert stages.effective_priority(ancient, NOW, config) == NORMAL
    assert stages.effective_priority(job(5, priority=NORMAL, queued=NOW - 61), NOW, config) == HIGH
    assert stages.effective_priority(job(6, priority=LOW, queued=NOW - 59), NOW, config) == LOW


# -- reasons ---------------------------------------------------------------------------------


def test_every_waiting_job_says_why():
    n = node(cores=2)
    busy = running(50, n, cpu=1)
    queue = [job(1, cpu=2), job(2, waiting_for=(12,)), job(3, cpu=1, team="a")]
    config = SchedulerConfig(quotas={"a": Quota(cpu=0.5, memory_mb=1000)})
    out = schedule(queue, [n], [busy], NOW, config)
    assert out.reasons[1] == "needs 2 cpu, 1 free"
    assert out.reasons[2] == "after job 12"
    assert out.reasons[3].startswith("over team quota: team a may use 0.5 cpu")
    assert out.bindings == []


def test_team_quotas_bound_what_a_team_holds_and_leave_other_teams_alone():
    n = node(cores=2)
    held = running(50, n, cpu=0.5, team="a")
    queue = [job(1, cpu=0.5, team="a"), job(2, cpu=0.5, team="a"), job(3, cpu=0.5, team="b"),
             job(4, cpu=0.5, team="c")]
    config = SchedulerConfig(quotas={"a": Quota(jobs=2), "b": Quota(cpu=0.25),
                                     "c": Quota(memory_mb=None)})
    out = schedule(queue, [n], [held], NOW, config)
    assert sorted(b.job_id for b in out.bindings) == [1, 4]  # a: one more job; c: no limit
    assert out.reasons[2] == "over team quota: team a may run 2 job(s) at once, 2 running"
    assert out.reasons[3] == "over team quota: team b may use 0.25 cpu, 0 in use"


def test_a_job_larger_than_its_team_quota_is_named_as_never_fitting():
    assert stages.beyond_quota(Request(cpu=2), Quota(cpu=1)) == (
        "needs 2 cpu but its team's quota is 1 cpu")
    assert stages.beyond_quota(Request(memory_mb=4096), Quota(memory_mb=1024)).startswith(
        "needs 4096 MB memory")
    assert stages.beyond_quota(Request(), Quota(jobs=0)) == (
        "its team's quota allows no running jobs")
    assert stages.beyond_quota(Request(cpu=1), Quota(cpu=1, jobs=3)) is None
    assert stages.beyond_quota(Request(cpu=64), None) is None


def test_schedule_does_not_touch_the_callers_nodes():
    n = node()
    schedule([job(1), job(2)], [n], [], NOW)
    assert n.free_millicores == 2000


# -- backfill --------------------------------------------------------------------------------


def test_backfill_lets_short_jobs_through_but_protects_the_reservation():
    n = node(cores=2)
    r = running(50, n, cpu=1, timeout=100, started=NOW)  # frees its core at NOW + 100
    head = job(1, cpu=2)  # blocked until then
    short = job(2, cpu=1, timeout_s=50)  # ends before NOW + 100: may run now
    endless = job(3, cpu=1, queued=NOW + 1)  # would hold the core past the reservation
    out = schedule([head, short, endless], [n], [r], NOW)
    assert out.reservation.job_id == 1 and out.reservation.at == NOW + 100
    assert [(b.job_id, b.backfilled) for b in out.bindings] == [(2, True)]
    assert out.reasons[3] in ("waiting for job 1, which holds the reservation",
                              "needs 1 cpu, 0 free")


def test_backfill_may_use_room_the_reservation_leaves_free():
    n = node(cores=3)
    r = running(50, n, cpu=1, timeout=100, started=NOW)
    head = job(1, cpu=3)
    out = schedule([head, job(2, cpu=0.5)], [n], [r], NOW)
    assert out.reservation.at == NOW + 100
    # After the head takes all 3 cores at NOW+100 there is no room: job 2 must not run
    # unless it ends in time.
    assert out.bindings == []
    out = schedule([head, job(2, cpu=0.5, timeout_s=10)], [n], [r], NOW)
    assert [b.job_id for b in out.bindings] == [2]


def test_without_timeouts_the_reservation_is_unbounded():
    n = node(cores=2)
    r = running(50, n, cpu=2)
    out = schedule([job(1, cpu=2)], [n], [r], NOW)
    assert out.reservation.at == math.inf


# -- preemption ------------------------------------------------------------------------------


def test_preemption_names_the_fewest_lower_priority_checkpointable_victims():
    n = node(cores=2)
    small = running(10, n, cpu=1, priority=LOW, checkpointable=True)
    other = running(11, n, cpu=1, priority=LOW, checkpointable=True, started=NOW - 5)
    out = schedule([job(1, cpu=1, priority=HIGH)], [n], [small, other], NOW)
    assert len(out.preemptions) == 1
    assert out.preemptions[0].victims == (11,)  # the most recently started loses least


@pytest.mark.parametrize("priority,checkpointable", [(LOW, False), (HIGH, True)])
def test_never_preempts_uncheckpointable_or_equal_priority_jobs(priority, checkpointable):
    n = node(cores=1)
    r = running(10, n, cpu=1, priority=priority, checkpointable=checkpointable)
    out = schedule([job(1, cpu=1, priority=HIGH)], [n], [r], NOW)
    assert out.preemptions == []


def test_a_pass_over_10000_pending_jobs_binds_exactly_what_fits():
    queue = [job(i, cpu=1, priority=i % 3, queued=NOW - i) for i in range(1, 10_001)]
    out = schedule(queue, [node(cores=2)], [], NOW)
    assert len(out.bindings) == 2
    assert len(out.reasons) == 9_998
    bound = {b.job_id for b in out.bindings}
    best = stages.queue_order(queue, NOW, SchedulerConfig())[:2]
    assert bound == {j.id for j in best}


# -- stage objects, one at a time, and profiles ------------------------------------------------


def cycle_of(*stages_, nodes=None, running_=(), config=None) -> Cycle:
    """A pass's state over ``nodes`` with ``stages_`` begun, as :func:`schedule` makes it."""
    c = Cycle(NOW, config or SchedulerConfig(), nodes if nodes is not None else [node()],
              list(running_))
    for stage in stages_:
        stage.begin(c)
    return c


def test_one_status_type_says_ok_wait_or_never_with_a_reason():
    assert OK.ok and OK.code is Code.OK
    assert Status.wait("after job 3") == Status(Code.WAIT, "after job 3")
    never = Status.never("request larger than any node")
    assert not never.ok and never.code is Code.NEVER and never.reason.startswith("request")


def test_queue_sort_stage_orders_by_class_then_age():
    c = cycle_of()
    queue = [job(1, priority=LOW, queued=NOW - 5), job(2, priority=HIGH), job(3, queued=NOW - 1)]
    assert [j.id for j in PriorityAging().order(queue, c)] == [2, 3, 1]


def test_dependencies_stage_waits_for_unfinished_jobs():
    stage, c = Dependencies(), cycle_of()
    assert stage.pre_filter(c, job(1)) is OK
    assert stage.pre_filter(c, job(2, waiting_for=(4, 5))) == Status.wait("after job 4, 5")
    many = stage.pre_filter(c, job(3, waiting_for=tuple(range(10, 17))))
    assert many.reason == "after job 10, 11, 12, 13, 14 and 2 more"


def test_quota_stage_is_idle_without_quotas_and_counts_what_it_reserves():
    stage = TeamQuota()
    assert stage.begin(Cycle(NOW, SchedulerConfig(), [node()], [])) is False
    config = SchedulerConfig(quotas={"a": Quota(jobs=1)})
    fit = Fit()
    c = cycle_of(fit, stage, config=config)
    first, second = job(1, team="a"), job(2, team="a")
    assert stage.pre_filter(c, first) is OK
    fit.reserve(c, first, c.nodes[0])
    stage.reserve(c, first, c.nodes[0])
    assert stage.pre_filter(c, second).reason == (
        "over team quota: team a may run 1 job(s) at once, 1 running")
    stage.unreserve(c, first)
    stage.unreserve(c, first)  # twice is once
    assert stage.pre_filter(c, second) is OK
    assert c.state[stage].usage.jobs["a"] == 0 and c.state[stage].usage.cpu["a"] == 0


def test_fit_stage_keeps_nodes_with_room_and_says_why_not():
    stage = Fit()
    big, small = node(cores=4), NodeState(NodeCapacity("n2", (0,), 8000))
    c = cycle_of(stage, nodes=[big, small])
    nodes, status = stage.filter(c, job(1, cpu=2), c.nodes)
    assert status is OK and nodes == [big]
    big.allocate(Request(cpu=3, memory_mb=10))
    c.state[stage].clear()  # a node changed outside the stage: forget what it remembered
    nodes, status = stage.filter(c, job(2, cpu=2), c.nodes)
    assert nodes == [] and status == Status.wait("needs 2 cpu, 1 free")


def test_a_job_larger_than_every_node_can_never_run():
    stage = Fit()
    c = cycle_of(stage)
    nodes, status = stage.filter(c, job(1, cpu=64), c.nodes)
    assert nodes == [] and status.code is Code.NEVER
    assert status.reason == "request larger than any node: needs 64 cpu, node n1 has 2"


def test_a_job_that_can_never_run_takes_no_reservation_and_blocks_nobody():
    n = node(cores=2)
    r = running(50, n, cpu=1, timeout=100, started=NOW, priority=LOW, checkpointable=True)
    queue = [job(1, cpu=64, priority=HIGH), job(2, cpu=1, queued=NOW + 1)]
    out = schedule(queue, [n], [r], NOW)
    assert out.reasons[1] == "request larger than any node: needs 64 cpu, node n1 has 2"
    assert out.reservation is None and out.preemptions == []
    assert [(b.job_id, b.backfilled) for b in out.bindings] == [(2, False)]


def test_fit_stage_reserves_room_and_unreserving_twice_is_once():
    stage = Fit()
    c = cycle_of(stage)
    n = c.nodes[0]
    stage.reserve(c, job(1, cpu=1.5, memory_mb=700), n)
    assert n.free_millicores == 500 and n.free_memory_mb == 7300
    assert [r.id for r in c.running] == [1] and 1 in c.allocations
    stage.unreserve(c, job(1))
    stage.unreserve(c, job(1))
    stage.unreserve(c, job(9))  # never reserved: nothing to give back
    assert n.free_millicores == 2000 and n.free_memory_mb == 8000
    assert c.running == [] and c.allocations == {}


def test_backfill_stage_reserves_for_the_head_and_guards_the_reservation():
    stage = Backfill()
    n = node(cores=2)
    r = running(50, n, cpu=1, timeout=100, started=NOW)
    c = cycle_of(stage, nodes=[n], running_=[r])
    assert stage.filter(c, job(2), c.nodes) == ([n], OK)  # no reservation yet: no guard
    assert stage.post_filter(c, job(1, cpu=2)) is False  # once per pass
    assert c.out.reservation == Reservation(1, "n1", NOW + 100)
    endless = job(3, cpu=1)
    assert stage.filter(c, endless, c.nodes) == (
        [], Status.wait("waiting for job 1, which holds the reservation"))
    assert stage.filter(c, job(4, cpu=1, timeout_s=50), c.nodes) == ([n], OK)


def test_backfill_stage_gives_back_the_future_room_it_claimed_once():
    stage = Backfill()
    n = node(cores=4)
    r = running(50, n, cpu=2, timeout=100, started=NOW)
    c = cycle_of(stage, nodes=[n], running_=[r])
    stage.post_filter(c, job(1, cpu=3))  # at NOW + 100 the head takes 3 of 4 cores
    future = c.state[stage].futures["n1"]
    assert future.free_millicores == 1000
    stage.reserve(c, job(2, cpu=1), n)  # no timeout: keeps its core at that moment too
    assert future.free_millicores == 0
    stage.unreserve(c, job(2))
    stage.unreserve(c, job(2))
    assert future.free_millicores == 1000


def test_preemption_stage_names_victims_for_the_first_blocked_job_only():
    stage = Preemption()
    n = node(cores=1)
    r = running(10, n, cpu=1, priority=LOW, checkpointable=True)
    c = cycle_of(stage, nodes=[n], running_=[r])
    assert stage.post_filter(c, job(1, priority=HIGH)) is False
    assert c.out.preemptions == [ScheduledPreemption(1, "n1", (10,))]


def test_bin_pack_stage_prefers_the_node_the_job_fills_most():
    stage, c = BinPack(), cycle_of()
    roomy, snug = node(cores=8), NodeState(NodeCapacity("n2", (0, 1), 8000))
    a = job(1, cpu=2)
    assert stage.score(c, a, snug) > stage.score(c, a, roomy)


def test_binder_stage_binds_what_was_reserved():
    fit, binder = Fit(), Binder()
    c = cycle_of(fit)
    fit.reserve(c, job(1), c.nodes[0])
    binder.bind(c, job(1), c.nodes[0])
    assert [(b.job_id, b.allocation.node, b.backfilled) for b in c.out.bindings] == [
        (1, "n1", False)]


class OnlyTeam(Stage):
    """A permit for tests: refuses every job outside one team."""

    name = "only-team"

    def permit(self, cycle, job, node):
        return OK if job.team == "a" else Status.wait("not team a")


def test_a_profile_with_a_refusing_permit_unreserves_and_frees_the_room():
    base = DEFAULT_PROFILE
    profile = Profile("permit", base.queue_sort, base.bind, base.pre_filters, base.filters,
                      base.post_filters, base.scores, base.reserves, permits=(OnlyTeam(),))
    n = node(cores=1)
    queue = [job(1, team="b"), job(2, team="a", queued=NOW + 1)]
    out = schedule(queue, [n], [], NOW, profile=profile)
    assert out.reasons == {1: "not team a"}
    assert [b.job_id for b in out.bindings] == [2]  # job 1's room came back for job 2


class Fifo(Stage):
    name = "fifo"

    def order(self, jobs, cycle):
        return sorted(jobs, key=lambda j: (j.queued_at, j.id))


def test_another_queue_sort_is_another_profile():
    profile = dataclasses.replace(DEFAULT_PROFILE, name="fifo", queue_sort=Fifo())
    queue = [job(1, priority=LOW, queued=NOW - 10), job(2, priority=HIGH)]
    fifo = schedule(queue, [node(cores=1)], [], NOW, profile=profile)
    default = schedule(queue, [node(cores=1)], [], NOW)
    assert [b.job_id for b in fifo.bindings] == [1]
    assert [b.job_id for b in default.bindings] == [2]


def test_the_default_profile_lists_its_stages_by_name():
    assert [s.name for s in DEFAULT_PROFILE.stages()] == [
        "priority-aging", "dependencies", "team-quota", "node-selector", "anti-affinity", "fit",
        "backfill", "preemption", "bin-pack", "spread", "binder"]
