"""Placing jobs on one node among many: node labels (selectors), node state (only READY
nodes take new work), spreading a group over nodes, anti-affinity, and preemption and the
backfill reservation restricted to the nodes a job may use. Pure: no daemon, no clock."""

from __future__ import annotations

from llmos.kernel.resources import DRAINING, LOST, NodeCapacity, NodeState, Request
from llmos.kernel.scheduler import (
    Code,
    Cycle,
    PendingJob,
    Reservation,
    RunningJob,
    SchedulerConfig,
    schedule,
    stages,
)
from llmos.kernel.scheduler import Preemption as ScheduledPreemption
from llmos.kernel.scheduler.profiles import AntiAffinity, Fit, NodeSelector, Spread

NOW = 10_000.0
LOW, NORMAL, HIGH = 0, 1, 2
H100 = (("gpu", "h100"),)


def node(name: str, cores: int = 4, memory_mb: int = 8000, state: str = "ready",
         **labels: str) -> NodeState:
    return NodeState(NodeCapacity(name, tuple(range(cores)), memory_mb, (), labels), state=state)


def cluster() -> list[NodeState]:
    """Three nodes: a (gpu=h100, zone=x), b (gpu=a100), c (no labels, the roomiest)."""
    return [node("a", gpu="h100", zone="x"), node("b", gpu="a100"), node("c", cores=8)]


def job(i: int, cpu: float = 1, priority: int = NORMAL, queued: float | None = None,
        **kw) -> PendingJob:
    return PendingJob(i, Request(cpu=cpu, memory_mb=100), priority,
                      NOW + i if queued is None else queued, **kw)


def running(i: int, state: NodeState, cpu: float = 1, priority: int = NORMAL,
            timeout: float | None = None, checkpointable: bool = False,
            started: float = NOW - 10, group: str | None = None) -> RunningJob:
    alloc = state.allocate(Request(cpu=cpu, memory_mb=100))
    return RunningJob(i, alloc, priority, started, timeout, checkpointable, group=group)


def placed(out) -> dict[int, str]:
    return {b.job_id: b.allocation.node for b in out.bindings}


# -- labels ---------------------------------------------------------------------------------


def test_a_selector_picks_the_node_with_its_labels():
    # bin packing alone would pick a or b (the fuller nodes) before c; the labels decide
    out = schedule([job(1, selector=H100), job(2, selector=(("gpu", "a100"),))],
                   cluster(), [], NOW)
    assert placed(out) == {1: "a", 2: "b"}


def test_every_selected_label_must_match():
    nodes = cluster()
    both = job(1, selector=(("gpu", "h100"), ("zone", "x")))
    wrong_zone = job(2, selector=(("gpu", "h100"), ("zone", "y")))
    out = schedule([both, wrong_zone], nodes, [], NOW)
    assert placed(out) == {1: "a"}
    assert out.reasons[2] == "no ready node with labels gpu=h100,zone=y"


def test_no_ready_node_with_the_labels_waits_and_says_why():
    out = schedule([job(1, selector=(("gpu", "tpu"),))], cluster(), [], NOW)
    assert out.bindings == []
    assert out.reasons[1] == "no ready node with labels gpu=tpu"  # WAIT: such a node may join


def test_labelled_nodes_that_are_not_ready_are_named_in_the_reason():
    nodes = [node("a", state=DRAINING, gpu="h100"), node("b", state=LOST, gpu="h100"),
             node("c")]
    out = schedule([job(1, selector=H100)], nodes, [], NOW)
    assert out.bindings == [] and out.reservation is None and out.preemptions == []
    assert out.reasons[1] == "no ready node with labels gpu=h100 (a is draining, b is lost)"


def test_a_waiting_selector_job_does_not_take_the_reservation_from_the_next_blocked_job():
    c = node("c", cores=1)
    r = running(50, c, timeout=100, started=NOW)
    out = schedule([job(1, selector=(("gpu", "tpu"),)), job(2)], [c], [r], NOW)
    assert out.reservation == Reservation(2, "c", NOW + 100)


# -- node state -----------------------------------------------------------------------------


def test_draining_and_lost_nodes_never_get_new_work():
    nodes = [node("a", cores=16, state=DRAINING), node("b", cores=16, state=LOST),
             node("c", cores=2)]
    out = schedule([job(i) for i in range(1, 6)], nodes, [], NOW)
    assert placed(out) == {1: "c", 2: "c"}
    assert all(r == "needs 1 cpu, 0 free" for r in out.reasons.values())
    assert sorted(out.reasons) == [3, 4, 5]


def test_with_no_ready_node_at_all_jobs_wait_rather_than_fail():
    nodes = [node("a", state=DRAINING), node("b", state=LOST)]
    out = schedule([job(1)], nodes, [], NOW)
    assert out.bindings == []
    assert out.reasons[1] == "no ready node (a is draining, b is lost)"


def test_copy_node_keeps_the_node_state():
    assert stages.copy_node(node("a", state=DRAINING)).state == DRAINING


def test_too_large_for_every_labelled_node_can_never_run_even_if_another_node_could():
    nodes = [node("a", cores=4, gpu="h100"), node("c", cores=16)]
    out = schedule([job(1, cpu=8, selector=H100)], nodes, [], NOW)
    assert out.reasons[1] == "request larger than any node: needs 8 cpu, node a has 4"
    status = _fit_status(nodes, job(1, cpu=8, selector=H100))
    assert status.code is Code.NEVER


def test_too_large_for_the_ready_labelled_nodes_waits_for_a_larger_one_that_is_draining():
    nodes = [node("a", cores=4, gpu="h100"), node("d", cores=16, state=DRAINING, gpu="h100")]
    status = _fit_status(nodes, job(1, cpu=8, selector=H100))
    assert status.code is Code.WAIT
    assert status.reason == "no ready node could ever hold it; only d (draining) could"


def _fit_status(nodes, pending):
    """The status the default filters give ``pending`` (node-selector, then fit)."""
    selector, fit = NodeSelector(), Fit()
    c = Cycle(NOW, SchedulerConfig(), nodes, [])
    selector.begin(c), fit.begin(c)
    kept, status = selector.filter(c, pending, c.nodes)
    assert status.ok
    return fit.filter(c, pending, kept)[1]


# -- spread, anti-affinity, bin packing -----------------------------------------------------


def three_alike() -> list[NodeState]:
    return [node("a"), node("b"), node("c")]


def test_bin_packing_fills_one_node_first_without_spread():
    out = schedule([job(i, group="web") for i in range(1, 4)], three_alike(), [], NOW)
    assert set(placed(out).values()) == {"a"}


def test_spread_places_a_group_on_different_nodes():
    out = schedule([job(i, group="web", spread=True) for i in range(1, 4)],
                   three_alike(), [], NOW)
    assert sorted(placed(out).values()) == ["a", "b", "c"]


def test_spread_is_soft_and_bin_packing_breaks_its_ties():
    # six replicas on three nodes: two each; then a seventh still runs (spread is soft)
    out = schedule([job(i, group="web", spread=True) for i in range(1, 8)],
                   three_alike(), [], NOW)
    counts = sorted(list(placed(out).values()).count(n) for n in "abc")
    assert counts == [2, 2, 3] and out.reasons == {}


def test_spread_counts_the_group_jobs_already_running():
    nodes = three_alike()
    held = [running(50, nodes[0], group="web"), running(51, nodes[1], group="web")]
    out = schedule([job(1, group="web", spread=True)], nodes, held, NOW)
    assert placed(out) == {1: "c"}


def test_anti_affinity_refuses_a_fourth_replica_on_three_nodes():
    out = schedule([job(i, group="db", anti_affinity=True) for i in range(1, 5)],
                   three_alike(), [], NOW)
    assert sorted(placed(out).values()) == ["a", "b", "c"]
    assert out.reasons == {4: "anti-affinity: every ready node already runs a job of group db"}


def test_anti_affinity_keeps_away_from_running_members_and_only_its_own_group():
    nodes = three_alike()
    held = [running(50, nodes[0], group="db"), running(51, nodes[1], group="other")]
    out = schedule([job(1, group="db", anti_affinity=True)], nodes, held, NOW)
    assert placed(out) == {1: "b"}  # the fullest node without a db job


def test_anti_affinity_with_a_selector_names_the_labels():
    nodes = cluster()
    held = [running(50, nodes[0], group="db")]
    out = schedule([job(1, group="db", anti_affinity=True, selector=H100)], nodes, held, NOW)
    assert out.reasons[1] == (
        "anti-affinity: every ready node with labels gpu=h100 already runs a job of group db")


def test_group_stages_forget_an_unreserved_job_once():
    for stage in (AntiAffinity(), Spread()):
        c = Cycle(NOW, SchedulerConfig(), three_alike(), [])
        stage.begin(c)
        member = job(1, group="db", anti_affinity=True, spread=True)
        stage.reserve(c, member, c.nodes[0])
        assert c.state[stage].counts["db"]["a"] == 1
        stage.unreserve(c, member)
        stage.unreserve(c, member)  # twice is once
        assert c.state[stage].counts["db"]["a"] == 0


def test_a_job_bound_in_the_pass_runs_with_its_group():
    fit = Fit()
    c = Cycle(NOW, SchedulerConfig(), three_alike(), [])
    fit.begin(c)
    fit.reserve(c, job(1, group="db"), c.nodes[0])
    assert [(r.id, r.group) for r in c.running] == [(1, "db")]


# -- preemption and the reservation, on the nodes a job may use -----------------------------


def test_preemption_picks_victims_only_on_a_node_with_the_labels():
    b, a = node("b", cores=1), node("a", cores=1, gpu="h100")  # b first: it would win a tie
    held = [running(10, a, priority=LOW, checkpointable=True),
            running(11, b, priority=LOW, checkpointable=True)]
    out = schedule([job(1, priority=HIGH, selector=H100)], [b, a], held, NOW)
    assert out.preemptions == [ScheduledPreemption(1, "a", (10,))]
    anywhere = schedule([job(1, priority=HIGH)], [b, a], held, NOW)
    assert anywhere.preemptions == [ScheduledPreemption(1, "b", (11,))]


def test_preemption_never_targets_a_draining_node():
    a, b = node("a", cores=1, state=DRAINING), node("b", cores=1)
    held = [running(10, a, priority=LOW, checkpointable=True),
            running(11, b, priority=LOW, checkpointable=True, started=NOW - 100)]
    out = schedule([job(1, priority=HIGH)], [a, b], held, NOW)
    assert out.preemptions == [ScheduledPreemption(1, "b", (11,))]


def test_preemption_respects_anti_affinity():
    a, b = node("a", cores=2), node("b", cores=1)
    held = [running(10, a, priority=LOW, checkpointable=True),
            running(12, a, priority=LOW, group="db"),
            running(11, b, priority=LOW, checkpointable=True, started=NOW - 100)]
    out = schedule([job(1, priority=HIGH, group="db", anti_affinity=True)], [a, b], held, NOW)
    assert out.preemptions == [ScheduledPreemption(1, "b", (11,))]


def test_the_reservation_is_on_a_node_the_job_may_use_and_does_not_block_the_others():
    a, b = node("a", cores=1, gpu="h100"), node("b", cores=2)
    held = [running(50, a, timeout=100, started=NOW),
            running(51, b, cpu=2, timeout=10, started=NOW)]
    out = schedule([job(1, priority=HIGH, selector=H100)], [a, b], held, NOW)
    assert out.reservation == Reservation(1, "a", NOW + 100)  # not b, free sooner
    # with b free again, an endless job that needs all of b may start: the reserved job
    # could never use b, so nothing there can delay it
    b_free = node("b", cores=2)
    out = schedule([job(1, priority=HIGH, selector=H100), job(2, cpu=2)],
                   [a, b_free], [held[0]], NOW)
    assert out.reservation == Reservation(1, "a", NOW + 100)
    assert [(x.job_id, x.allocation.node, x.backfilled) for x in out.bindings] == [
        (2, "b", True)]


# -- the common path keeps Fit's cache ------------------------------------------------------


def test_without_a_selector_the_pass_node_list_reaches_fit_unchanged():
    selector, fit = NodeSelector(), Fit()
    c = Cycle(NOW, SchedulerConfig(), three_alike(), [])
    selector.begin(c), fit.begin(c)
    kept, status = selector.filter(c, job(1), c.nodes)
    assert kept is c.nodes and status.ok  # the same object: Fit's cache applies
    fit.filter(c, job(1), kept)
    assert len(c.state[fit]) == 1  # remembered for the next job with the same request
    assert fit.filter(c, job(2), kept) is fit.filter(c, job(3), kept)


def two_small_h100() -> list[NodeState]:
    return [node("a", cores=1, gpu="h100"), node("b", cores=1, gpu="h100"), node("c")]


def test_a_selector_hands_on_one_list_all_pass_and_fit_stays_correct_after_a_bind():
    selector, fit = NodeSelector(), Fit()
    c = Cycle(NOW, SchedulerConfig(), two_small_h100(), [])
    selector.begin(c), fit.begin(c)
    first, _ = selector.filter(c, job(1, selector=H100), c.nodes)
    again, _ = selector.filter(c, job(2, selector=H100), c.nodes)
    assert first is again and [n.name for n in first] == ["a", "b"]
    assert fit.filter(c, job(1, selector=H100), first)[0] == first[:2]
    fit.reserve(c, job(1, selector=H100), first[0])  # a is now full
    assert [n.name for n in fit.filter(c, job(2, selector=H100), again)[0]] == ["b"]
    # and through the whole pass: two fit on the labelled nodes, the third waits
    out = schedule([job(i, selector=H100) for i in range(1, 4)], two_small_h100(), [], NOW)
    assert sorted(placed(out).values()) == ["a", "b"]
    assert out.reasons == {3: "needs 1 cpu, 0 free"}
