"""The scheduler simulator (`llmos sim`): hand-made traces whose exact schedule is known for
each policy, the trace and cluster readers' errors, the command line, and the same
decisions as the daemon on the same input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from llmos.kernel.resources import GPU, NodeCapacity
from llmos.kernel.scheduler.sim import (
    ClusterError,
    SimParams,
    TraceError,
    TraceJob,
    from_flags,
    load_cluster,
    load_trace,
    select,
    simulate,
)
from llmos.config import Settings
from llmos.kernel.jobs import JobSpec, ResourceSpec
from llmos.kernel.scheduler.sim.engine import SUCCEEDED, Simulator, profile_for
from llmos.system import System

HIGH, NORMAL, LOW = 2, 1, 0


def job(id: int, submit: float, duration: float, gpus: int = 1, **kw) -> TraceJob:
    return TraceJob(id, submit, duration, gpus, **kw)


def run(policy: str, jobs: list[TraceJob], nodes: int = 1, gpus: int = 1,
        **params) -> dict[int, object]:
    """Each job's end state after simulating ``jobs`` on ``nodes`` nodes of ``gpus`` GPUs
    (8 cpu per GPU, 64 GB per GPU)."""
    cluster = from_flags(nodes, gpus, cpus_per_node=8 * gpus, memory_gb=64 * gpus)
    result = simulate(jobs, cluster.capacities(), policy,
                      SimParams(**{"tick_s": 60.0, **params}), record_decisions=True)
    return {j.trace.id: j for j in result.jobs}


def starts(done: dict) -> dict[int, float]:
    return {i: j.first_start for i, j in done.items()}


# --- known schedules ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fifo", "llmos-easy", "llmos"])
def test_jobs_start_in_arrival_order_on_a_busy_gpu(policy):
    done = run(policy, [job(1, 0, 100), job(2, 1, 50), job(3, 2, 10)])
    assert starts(done) == {1: 0, 2: 100, 3: 150}
    assert {i: j.end for i, j in done.items()} == {1: 100, 2: 150, 3: 160}
    assert all(j.outcome == SUCCEEDED and j.preemptions == 0 for j in done.values())


def test_sjf_knows_durations_and_runs_the_shortest_first():
    done = run("sjf", [job(1, 0, 100), job(2, 1, 50), job(3, 2, 10)])
    assert starts(done) == {1: 0, 2: 110, 3: 100}


@pytest.mark.parametrize("policy", ["llmos-easy", "llmos"])
def test_easy_backfill_lets_a_short_declared_job_pass_but_not_one_that_would_delay(policy):
    # A holds one of two GPUs until 100 (its declared limit); B needs both, so it holds
    # the reservation at 100. C declares it ends by 62: it runs at once in the free GPU.
    # D declares nothing: it could delay B, so it waits behind B.
    jobs = [job(1, 0, 100, 1, time_limit_s=100), job(2, 1, 10, 2),
            job(3, 2, 50, 1, time_limit_s=60), job(4, 3, 200, 1)]
    done = run(policy, jobs, gpus=2)
    assert starts(done) == {1: 0, 2: 100, 3: 2, 4: 110}
    assert done[3].trace.id == 3 and done[3].end == 52


def test_fifo_never_backfills():
    jobs = [job(1, 0, 100, 1, time_limit_s=100), job(2, 1, 10, 2),
            job(3, 2, 50, 1, time_limit_s=60)]
    assert starts(run("fifo", jobs, gpus=2)) == {1: 0, 2: 100, 3: 110}


@pytest.mark.parametrize("policy", ["fifo", "llmos"])
def test_a_gang_starts_all_at_once_across_nodes_and_holds_nothing_before(policy):
    # Two nodes of 4 GPUs; job 1 holds 2 GPUs until 100; the 8-GPU gang needs both nodes
    # whole: it holds nothing until 100, then all 8 GPUs on the two nodes at once.
    cluster = from_flags(2, 4, cpus_per_node=32, memory_gb=256)
    result = simulate([job(1, 0, 100, 2), job(2, 1, 50, 8)], cluster.capacities(), policy,
                      SimParams(tick_s=60.0), record_decisions=True)
    gang = next(j for j in result.jobs if j.trace.id == 2)
    assert gang.first_start == 100 and gang.end == 150
    assert sorted(a.node for a in gang_allocations(result, 2)) == ["node-0", "node-1"]
    held_before = [busy for t, busy in result.busy if t < 100]
    assert max(held_before) == 2  # never a part of the gang before it all fits


def gang_allocations(result, job_id):
    sim_job = next(j for j in result.jobs if j.trace.id == job_id)
    return sim_job.bindings[0][1]


def test_a_preempted_job_loses_the_work_since_its_checkpoint_and_pays_the_restore():
    # L (low, checkpointable) runs from 0; H (high) arrives at 700 and preempts it. L had
    # checkpointed at 300 and 600: it loses 100 s, then resumes at 800 after H, pays 60 s
    # to restore, and runs the 400 s left: it ends at 1260.
    jobs = [job(1, 0, 1000, priority=LOW), job(2, 700, 100, priority=HIGH)]
    done = run("llmos-easy", jobs, checkpoint_interval_s=300, restore_s=60)
    low, high = done[1], done[2]
    assert (high.first_start, high.end) == (700, 800)
    assert low.preemptions == 1 and low.lost == 100
    assert [t for t, _ in low.bindings] == [0, 800] and low.end == 1260
    assert low.waited == 100  # queued again from 700 to 800


def test_a_victim_yields_after_the_grace_and_its_preemptor_starts_then():
    # As the daemon: L is asked to yield at 700 and stops at 730 (checkpoint at 600: 130 s
    # lost); H starts at 730.
    jobs = [job(1, 0, 1000, priority=LOW), job(2, 700, 100, priority=HIGH)]
    done = run("llmos-easy", jobs, checkpoint_interval_s=300, restore_s=60, stop_s=30)
    assert done[2].first_start == 730 and done[1].lost == 130
    assert [t for t, _ in done[1].bindings] == [0, 830] and done[1].end == 830 + 60 + 400


@pytest.mark.parametrize("policy", ["fifo", "tiresias", "llmos"])
def test_with_rounds_a_pass_runs_only_at_each_round_and_what_came_between_waits(policy):
    # One GPU. Without rounds each job starts the moment it can. With 300 s rounds: job 1
    # arrives at 10 and starts at the round of 300; it ends at 690, and job 2 (arrived at
    # 350) starts at the next round, 900. Job 3 arrives at 1000, when nothing waits and
    # nothing runs: it too waits for its round, 1200.
    jobs = [job(1, 10, 90), job(2, 350, 50), job(3, 1000, 10)]
    assert starts(run(policy, jobs)) == {1: 10, 2: 350, 3: 1000}
    done = run(policy, [job(1, 10, 390), job(2, 350, 50), job(3, 1000, 10)], round_s=300)
    assert starts(done) == {1: 300, 2: 900, 3: 1200}
    assert done[1].end == 690 and done[2].end == 950
    assert done[2].waited == 900 - 350


def test_with_rounds_a_preemption_and_its_victims_restart_wait_for_rounds():
    # L (low) runs from 0; H (high) arrives at 700: the round of 900 asks L to yield; L
    # stops at 930 (checkpoint at 900: 30 s lost) and H starts at the next round, 1200.
    # H ends at 1300; L resumes at 1500, restores for 60 s and runs its last 100 s.
    jobs = [job(1, 0, 1000, priority=LOW), job(2, 700, 100, priority=HIGH)]
    done = run("llmos-easy", jobs, checkpoint_interval_s=300, restore_s=60, stop_s=30,
               round_s=300)
    assert done[2].first_start == 1200 and done[2].end == 1300
    assert done[1].lost == 30 and [t for t, _ in done[1].bindings] == [0, 1500]
    assert done[1].end == 1500 + 60 + 100


@pytest.mark.parametrize("round_s", [-1.0, 0.5, float("nan"), float("inf")])
def test_a_round_shorter_than_a_second_or_not_a_number_is_refused(round_s):
    with pytest.raises(ValueError, match="round_s must be 0 .no rounds. or at least 1 s"):
        run("fifo", [job(1, 0, 10)], round_s=round_s)


def test_a_long_round_is_no_livelock():
    done = run("fifo", [job(1, 0, 50), job(2, 10, 50)], round_s=86400)
    assert starts(done) == {1: 0, 2: 86400}


def test_jobs_that_are_not_checkpointable_are_never_preempted():
    jobs = [job(1, 0, 1000, priority=LOW, checkpointable=False),
            job(2, 700, 100, priority=HIGH)]
    done = run("llmos-easy", jobs)
    assert done[1].preemptions == 0 and done[1].end == 1000 and done[2].first_start == 1000


def test_tiresias_preempts_a_job_past_one_gpu_hour_for_a_new_one():
    # At 4000 the long job has 4000 GPU-s (queue 1), the newcomer none (queue 0): it
    # yields, keeping its checkpoint at 3600 (400 s lost), resumes at 4100 after 60 s of
    # restore with 6400 s left: it ends at 10560.
    done = run("tiresias", [job(1, 0, 10000), job(2, 4000, 100)],
               checkpoint_interval_s=1800, restore_s=60)
    assert (done[2].first_start, done[2].end) == (4000, 4100)
    assert [t for t, _ in done[1].bindings] == [0, 4100] and done[1].lost == 400
    assert done[1].end == 10560


def test_llmos_lets_short_jobs_pass_a_long_one_without_starving_it():
    # One GPU; a 3000 s job from 0; from 1000, a 100 s job every 50 s (twice what the GPU
    # can do) until 3850. fifo and tiresias keep the long job running: the first short
    # one waits until 3000. llmos preempts it after its quantum (aging_s = 600 s ran) for
    # the short one, and its wait lifts it back within aging_s: it runs again at 1600
    # and ends, while the stream still arrives.
    stream = [job(1, 0, 3000)] + [job(k, 1000 + 50 * (k - 2), 100) for k in range(2, 60)]
    for policy in ("fifo", "tiresias"):
        done = run(policy, stream, checkpoint_interval_s=0, restore_s=0)
        assert done[2].first_start == 3000 and done[1].preemptions == 0
    done = run("llmos", stream, checkpoint_interval_s=0, restore_s=0)
    assert done[2].first_start == 1000
    assert [t for t, _ in done[1].bindings][:2] == [0, 1600]
    assert done[1].outcome == SUCCEEDED and done[1].end == 8800
    assert max(j.waited for j in done.values()) < 6000


@pytest.mark.parametrize("policy", ["fifo", "sjf", "tiresias", "llmos-easy", "llmos"])
def test_two_equal_jobs_on_one_node_both_finish_with_few_preemptions(policy):
    # Two identical 8-GPU jobs a second apart: aging must never make them preempt each
    # other every aging_s (each attempt shorter than the 1800 s checkpoint: no progress).
    jobs = [job(1, 0, 10000, gpus=8), job(2, 1, 10000, gpus=8)]
    for stop_s in (0.0, 30.0):
        done = run(policy, jobs, gpus=8, tick_s=300.0, stop_s=stop_s)
        assert all(j.outcome == SUCCEEDED for j in done.values())
        assert sum(j.preemptions for j in done.values()) <= 4
        assert max(j.end for j in done.values()) < 25_000


def test_llmos_learns_a_teams_sweep_and_stops_preempting_its_half_done_jobs():
    """A team's jobs all run 2,000 s and checkpoint every 1,000 s. Two of them 1,100 s apart
    on one GPU: on a fresh cluster llmos goes by attained service and preempts the first
    for the second, losing the 100 s since its checkpoint; once 20 of the team's jobs have
    ended it knows the first is 900 s from its end, the second 2,000 s, and lets the first
    finish."""
    pair = [job(1, 0, 2000, team="a"), job(2, 1100, 2000, team="a")]
    fresh = run("llmos", pair, tick_s=300.0, checkpoint_interval_s=1000)
    assert fresh[1].preemptions == 1 and fresh[1].lost == 100
    before = [job(100 + i, i * 2100.0, 2000, team="a") for i in range(20)]
    later = [job(j.id, j.submit + 20 * 2100.0, 2000, team="a") for j in pair]
    learnt = run("llmos", before + later, tick_s=300.0, checkpoint_interval_s=1000)
    assert learnt[1].preemptions == 0 and learnt[2].preemptions == 0
    def total_jct(done: dict) -> float:
        return sum(done[i].end - done[i].trace.submit for i in (1, 2))

    # the first resumes at 3,100 s from its checkpoint: a 60 s restore, 1,000 s left
    assert total_jct(fresh) == 4160 + 2000
    assert total_jct(learnt) == 2000 + 2900


def test_llmos_never_throws_away_more_than_a_quantum_of_a_jobs_work_for_its_class():
    """A long job checkpoints every 1,800 s, three times the quantum (aging_s, 600 s); a
    stream of short jobs of its class keeps arriving. It is preempted only within 600 s
    after a checkpoint, so each attempt keeps at least what it saved and it finishes. Were
    it preempted whenever it had run a quantum, it would lose up to 1,800 s each time."""
    long_one = job(1, 0, 7200)
    shorts = [job(10 + i, 700.0 + 500 * i, 100) for i in range(20)]
    done = run("llmos", [long_one, *shorts], tick_s=60.0, checkpoint_interval_s=1800)
    assert done[1].outcome == SUCCEEDED
    # at most one preemption per checkpoint, each losing at most a quantum and the restore
    assert 0 < done[1].preemptions <= 7200 // 1800
    assert done[1].lost < done[1].preemptions * (600 + 60)
    assert done[1].end <= 7200 + 20 * 100 + done[1].lost  # it never waits idle
    # the first shorts wait for its first checkpoint (at 1,800 s) rather than cost it 700 s
    assert done[10].first_start >= 1800


def test_a_livelocked_policy_stops_with_a_clear_error_instead_of_hanging(monkeypatch):
    from dataclasses import replace

    from llmos.kernel.scheduler.framework import Preemption, Stage
    from llmos.kernel.scheduler.sim import NoProgress, engine

    monkeypatch.setattr(engine, "HORIZON_FACTOR", 10.0)  # 100 by default: 10x less to wait

    class PreemptEveryone(Stage):  # a broken policy: any waiting job preempts any other
        name = "preempt-everyone"

        def post_filter(self, cycle, pending):
            cycle.out.preemptions.extend(Preemption(pending.id, r.allocation.node, (r.id,))
                                         for r in cycle.running if r.checkpointable)
            return False

    broken = replace(profile_for("llmos-easy"), post_filters=(PreemptEveryone(),))
    cluster = from_flags(1, 8, cpus_per_node=64, memory_gb=512)
    began = time.perf_counter()
    with pytest.raises(NoProgress, match="no progress: livelock"):
        simulate([job(1, 0, 10000, gpus=8), job(2, 1, 10000, gpus=8)],
                 cluster.capacities(), broken, SimParams(tick_s=300.0))
    assert time.perf_counter() - began < 30


def test_llmos_gives_two_teams_turns_where_fifo_serves_the_first_comer():
    # Two GPUs; team a queues four 100 s jobs at 0, team b two at 1. fifo runs all of a's
    # first; llmos interleaves by dominant share: b's first job starts at 100.
    fair = [job(i, 0, 100, team="a") for i in (1, 2, 3, 4)] + \
           [job(i, 1, 100, team="b") for i in (5, 6)]
    assert starts(run("fifo", fair, gpus=2)) == {1: 0, 2: 0, 3: 100, 4: 100, 5: 200, 6: 200}
    assert starts(run("llmos", fair, gpus=2)) == {1: 0, 2: 0, 3: 100, 4: 200, 5: 100, 6: 200}


# --- trace and cluster files ---------------------------------------------------------------


PHILLY = ("timestamp,duration,num_gpus,gpu_time,cluster\n"
          "2017-10-01 00:00:00,100.0,1,100.0,aaa\n"
          "2017-10-01 00:00:10,50.0,2,100.0,bbb\n"
          "2017-10-01 00:00:20,10.0,1,10.0,aaa\n")


def test_the_philly_csv_is_read_filtered_and_compressed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(PHILLY)
    jobs = load_trace(path)
    assert [(j.id, j.duration, j.gpus, j.team) for j in jobs] == [
        (1, 100, 1, "aaa"), (2, 50, 2, "bbb"), (3, 10, 1, "aaa")]
    assert [j.id for j in select(jobs, team="aaa")] == [1, 3]
    fast = select(jobs, load=2.0)
    assert [j.submit - fast[0].submit for j in fast] == [0, 5, 10]
    assert [j.id for j in select(jobs, start=jobs[1].submit)] == [2, 3]
    with pytest.raises(TraceError, match="no job of the trace passes the filters"):
        select(jobs, team="zzz")


@pytest.mark.parametrize("row,error", [
    ("2017-10-01 00:00:30,abc,1,1.0,aaa", "line 5: duration must be a number, not 'abc'"),
    ("2017-10-01 00:00:30,10,1,aaa", "line 5: 4 fields, the header has 5"),
    ("yesterday,10,1,10,aaa", "line 5: timestamp 'yesterday' is neither a date"),
    ("2017-10-01 00:00:30,10,1.5,15,aaa", "line 5: num_gpus must be a whole number"),
    ("2017-10-01 00:00:30,-3,1,1,aaa", "line 5: duration must be at least 0"),
    ("nan,10,1,10,aaa", "line 5: timestamp 'nan' is neither a date"),
    ("2017-10-01 00:00:30,inf,1,1,aaa", "line 5: duration must be finite"),
    ('2017-10-01 00:00:30,10,1,10,"' + "x" * 200_000 + '"', "line 5: not CSV (field larger"),
])
def test_a_malformed_csv_row_is_reported_with_its_line_number(tmp_path, row, error):
    path = tmp_path / "t.csv"
    path.write_text(PHILLY + row + "\n")
    before = csv.field_size_limit(1 << 30)  # as after the data reader ran in this process
    try:
        with pytest.raises(TraceError) as e:
            load_trace(path)
    finally:
        csv.field_size_limit(before)
    assert str(e.value) == f"{path}, {error}" or str(e.value).startswith(f"{path}, {error}")


@pytest.mark.parametrize("line,error", [
    ('{"submit": 0, "duration": ', "line 3: not JSON"),
    ('{"submit": 0}', "line 3: missing field 'duration'"),
    ('{"submit": 0, "duration": 5, "gpu": 1}', "line 3: unknown field(s) gpu"),
    ('{"submit": 0, "duration": 5, "priority": "urgent"}', "line 3: priority must be one of"),
    ('{"submit": 0, "duration": 5, "checkpointable": "yes"}', "line 3: checkpointable must"),
    ('[1, 2]', "line 3: a line must be a JSON object"),
    ('{"submit": NaN, "duration": 5}', "line 3: submit must be finite"),
    ('{"submit": "inf", "duration": 5}', "line 3: submit 'inf' is neither a date"),
    ('{"submit": 1e20, "duration": 5}', "line 3: submit must be at most"),
    ('{"submit": 0, "duration": 1e400}', "line 3: duration must be finite"),
    ('{"submit": 0, "duration": 4e8}', "line 3: duration must be at most ten years"),
    ('{"submit": 0, "duration": 5, "time_limit_s": 4e8}', "line 3: time_limit_s must be at"),
    ('{"submit": 0, "duration": 5, "gpus": 5000}', "line 3: gpus must be at most 4,096"),
    ('{"submit": 0, "duration": 5, "id": 1' + "0" * 400 + "}", "line 3: id is too large"),
    ("[" * 100_000, "line 3: not JSON a trace can hold (nested too deep"),
])
def test_a_malformed_jsonl_line_is_reported_with_its_line_number(tmp_path, line, error):
    path = tmp_path / "t.jsonl"
    path.write_text('# submit, duration, ...\n{"submit": 0, "duration": 5}\n' + line + "\n")
    with pytest.raises(TraceError, match=None) as e:
        load_trace(path)
    assert str(e.value).startswith(f"{path}, {error}"), str(e.value)


def test_a_trace_with_a_byte_order_mark_reads_as_without(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("\ufeff" + PHILLY, encoding="utf-8")
    assert [(j.id, j.line, j.team) for j in load_trace(path)] == [
        (1, 2, "aaa"), (2, 3, "bbb"), (3, 4, "aaa")]


def test_the_jsonl_format_carries_priority_team_memory_and_limits(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [
        {"id": 7, "submit": "2017-10-01 00:00:00", "duration": 60, "gpus": 2, "cpu": 4,
         "memory_mb": 2048, "priority": "high", "team": "vision", "checkpointable": False,
         "time_limit_s": 120},
        {"submit": 1506816005, "duration": 30}]) + "\n")
    first, second = load_trace(path)
    assert first == TraceJob(7, 1506816000.0, 60, 2, "vision", HIGH, 4, 2048, False, 120)
    assert (second.id, second.gpus, second.priority, second.checkpointable) == (2, 0, 1, True)


def test_a_cluster_yaml_gives_node_groups_and_names_the_field_in_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("nodes:\n  - {name: a100, count: 2, gpus: 8, cpus: 64, memory_gb: 512,"
                    " labels: {gpu: a100}}\n  - {name: cpu, count: 1, gpus: 0, cpus: 32,"
                    " memory_gb: 128}\n")
    cluster = load_cluster(path)
    caps = cluster.capacities()
    assert [c.name for c in caps] == ["a100-0", "a100-1", "cpu-0"]
    assert cluster.gpus == 16 and caps[0].labels == {"gpu": "a100"}
    assert len(caps[2].cores) == 32 and caps[2].memory_mb == 128 * 1024
    path.write_text("nodes:\n  - {name: a, count: 2, gpus: many}\n")
    with pytest.raises(ClusterError, match="node group 1: gpus must be a number"):
        load_cluster(path)
    for group, error in (("{count: 200000}", "count must be a number from 1 to 100,000"),
                         ("{count: 1, gpus: 2000}", "gpus must be a number from 0 to 1,024"),
                         ("{count: 1, cpus: 5000}", "cpus must be a number from 1 to 4,096"),
                         ("{count: 1, memory_gb: .nan}", "memory_gb must be a number"),
                         ("{count: 1, memory_gb: .inf}", "memory_gb must be a number")):
        path.write_text(f"nodes:\n  - {group}\n")
        with pytest.raises(ClusterError, match=f"node group 1: {error}"):
            load_cluster(path)
    path.write_text("nodes:\n  - {name: a, count: 60000}\n  - {name: b, count: 60000}\n")
    with pytest.raises(ClusterError, match="120,000 nodes in all, over the 100,000"):
        load_cluster(path)


def test_the_table_shows_refused_jobs_only_when_there_are_some():
    from rich.console import Console

    from llmos.kernel.scheduler.sim import report

    def text(jobs) -> str:
        cluster = from_flags(1, 1, cpus_per_node=8, memory_gb=64)
        summary = report.summarize(simulate(jobs, cluster.capacities(), "fifo"))
        console = Console(width=250, record=True, file=io.StringIO())
        console.print(report.table([summary]))
        return console.export_text()

    assert "refused" not in text([job(1, 0, 10)])
    lines = text([job(1, 0, 10), job(2, 0, 10, gpus=16)]).splitlines()
    header = next(line for line in lines if "refused" in line)
    row = next(line for line in lines if "fifo" in line)
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.replace("┃", "│").split("│")]

    assert cells(row)[cells(header).index("refused")] == "1"


# --- the command line ---------------------------------------------------------------------


def llmos(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMOS_")}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "llmos.cli.main", *args], check=False, env=env,
                          capture_output=True, text=True, timeout=120)


def test_sim_help_documents_both_trace_formats():
    result = llmos("sim", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    for word in ("timestamp", "duration", "num_gpus", "gpu_time", "cluster", "submit",
                 "priority", "team", "memory_mb", "checkpointable", "time_limit_s",
                 "--load", "--vc", "--checkpoint-interval-s", "--restore-s"):
        assert word in text, word


def test_sim_writes_a_table_json_and_plots(tmp_path):
    trace = tmp_path / "philly.csv"
    trace.write_text(PHILLY)
    out = tmp_path / "out"
    result = llmos("sim", str(trace), "--policy", "fifo,llmos", "--nodes", "1",
                   "--gpus-per-node", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "fifo" in result.stdout and "llmos" in result.stdout and "avg JCT" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    fifo = summary["policies"][0]
    assert [p["policy"] for p in summary["policies"]] == ["fifo", "llmos"]
    # 1 at 0 (100 s), 2 at 100 (needs both GPUs), 3 at 150: JCTs 100, 140, 140.
    assert fifo["ended"] == 3 and fifo["avg_jct_s"] == pytest.approx(380 / 3)
    assert summary["meta"]["gpus"] == 2
    for name in ("jct_cdf.png", "utilisation.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,code,message", [
    (["missing.csv"], 1, "missing.csv: no such trace file"),
    (["BAD"], 1, "line 3: num_gpus must be a number"),
    (["GOOD", "--policy", "fifo,lottery"], 2, "unknown policy lottery (known: "),
    (["GOOD", "--load", "0"], 2, "--load must be above 0"),
    (["GOOD", "--tick-s", "0.5"], 2, "--tick-s must be at least 1"),
    (["GOOD", "--start", "nan"], 2, "--start/--end: not a date or epoch seconds"),
])
def test_sim_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, monkeypatch, args, code,
                                                       message):
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(PHILLY)
    bad.write_text(PHILLY.replace(",2,100.0,bbb", ",two,100.0,bbb"))
    args = [{"GOOD": str(good), "BAD": str(bad)}.get(a, a) for a in args]
    monkeypatch.chdir(tmp_path)
    result = llmos("sim", *args)
    assert result.returncode == code
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("flags,message", [
    ({"tick_s": float("nan")}, "--tick-s must be at least 1"),
    ({"load": float("inf")}, "--load must be above 0"),
    ({"restore_s": float("inf")}, "--restore-s must be from 0 to ten years"),
    ({"checkpoint_interval_s": -1.0}, "--checkpoint-interval-s must be from 0"),
    ({"preempt_grace_s": 1e12}, "--preempt-grace-s must be from 0"),
    ({"round_s": float("nan")}, "--round-s must be 0 .no rounds. or from 1"),
    ({"round_s": -300.0}, "--round-s must be 0 .no rounds. or from 1"),
    ({"round_s": 1e-300}, "--round-s must be 0 .no rounds. or from 1"),
])
def test_sim_flags_must_be_finite_and_bounded(flags, message):
    from llmos.cli.errors import UsageError
    from llmos.cli.sim import _check_numbers

    values = {"load": 1.0, "tick_s": 300.0, "checkpoint_interval_s": 1800.0,
              "restore_s": 60.0, "preempt_grace_s": 30.0, "round_s": 0.0, **flags}
    with pytest.raises(UsageError, match=message):
        _check_numbers(**values)


def test_the_cluster_flags_are_bounded_and_the_derived_size_is_capped():
    from llmos.cli.errors import UsageError
    from llmos.cli.sim import _cluster

    jobs = [job(1, 0, 10)]
    for args, message in (((200_000, 8, 64, 512.0), "--nodes must be from 1 to 100,000"),
                          ((1, 2000, 64, 512.0), "--gpus-per-node must be from 0 to 1,024"),
                          ((1, 8, 5000, 512.0), "--cpus-per-node must be from 1 to 4,096"),
                          ((1, 8, 64, float("nan")), "--memory-gb must be from")):
        with pytest.raises(UsageError, match=message):
            _cluster(jobs, None, *args)
    # 60 jobs of 4096 GPUs, a second apart, 1000 s each: ~123,000 GPUs busy on average
    huge = [TraceJob(i, float(i), 1000.0, 4096 if i != 7 else 4000, line=i + 1)
            for i in range(60)]
    with pytest.raises(ClusterError, match=r"needs 1\d\d,\d{3} nodes of 1 GPUs, over the "
                       r"100,000 .*its largest job, line 1, needs 4,096 GPUs"):
        _cluster(huge, None, None, 1, 64, 512.0)


# --- the same decisions as the daemon -----------------------------------------------------


# Two waves of jobs (gpus, class, team, seconds it runs): the first occupies part of the
# cluster, the second arrives while it runs; then the two short ones of the first end.
WAVES = [
    [(2, NORMAL, "a", 2), (1, NORMAL, "b", 1e6), (3, HIGH, "a", 2), (1, LOW, "b", 1e6)],
    [(4, NORMAL, "b", 1e6), (2, LOW, "a", 1e6), (1, HIGH, "b", 1e6), (4, NORMAL, "a", 1e6),
     (1, NORMAL, "a", 1e6), (2, HIGH, "b", 1e6), (1, LOW, "a", 1e6), (3, NORMAL, "b", 1e6)],
]
CAPS = [NodeCapacity(f"n{i}", tuple(range(16)), 65536,
                     tuple(GPU(g, "sim", 81920) for g in range(4))) for i in range(3)]


@pytest.mark.parametrize("policy", ["llmos", "llmos-easy"])
def test_the_simulator_and_the_daemon_bind_the_same_jobs_in_the_same_order(tmp_path, policy):
    """A real daemon (store, queue, node accounting, its own passes) over a simulated
    cluster through the simulated executor, against the simulator on the same jobs: the
    same bindings (job, node, GPUs), in the same order, pass after pass."""
    ids, daemon_order = daemon_decisions(tmp_path, policy)
    trace = [job(i, float(w), run_s, gpus, priority=prio, cpu=2 * gpus, team=team,
                 memory_mb=4096 * gpus, checkpointable=False)
             for w, wave in enumerate(WAVES) for i, (gpus, prio, team, run_s) in zip(ids[w], wave)]
    sim = Simulator(trace, CAPS, profile_for(policy), SimParams(tick_s=1e9),
                    record_decisions=True)
    result = sim.run()
    sim_order = [(j, node, sim.by_id[j].bindings[0][1][0].gpus)
                 for t, j, node in result.decisions if t <= 2]
    assert len(daemon_order) >= 6
    assert sim_order == daemon_order


def daemon_decisions(tmp_path, policy: str):
    """The daemon's bindings (job, node, GPUs) in order over three steps: after each wave
    is submitted, then after the two short jobs of the first wave ended."""
    from llmos.security.rbac import SYSTEM
    from llmos.store.models import Job, JobTransition

    system, _, _ = sim_system(tmp_path)
    try:
        daemon, admin = system.daemon, admin_of(system)
        daemon.profile = profile_for(policy)  # the daemon's policy, as LLMOS_SCHEDULER_POLICY
        system.identity.create_team(SYSTEM, "b")
        names = {LOW: "low", NORMAL: "normal", HIGH: "high"}
        ids: list[list[int]] = []
        for wave in WAVES:
            jobs = system.jobs.submit_many(admin, [
                JobSpec(program="noop", priority=names[prio], checkpointable=False, team=team,
                        resources=ResourceSpec(cpu=2 * gpus, memory_mb=4096 * gpus, gpu=gpus))
                for gpus, prio, team, _ in wave])
            ids.append([j.id for j in jobs])
            with daemon.lock:
                daemon.step()
        executor = daemon.executor("sim-test")
        for job_id, (*_, run_s) in zip(ids[0], WAVES[0]):
            if run_s == 2:
                executor.finish(job_id)
        with daemon.lock:
            daemon.step()
        with system.db.session() as s:
            rows = s.query(JobTransition).filter(JobTransition.to_state == "SCHEDULED") \
                .order_by(JobTransition.id).all()
            order = [(r.job_id, s.get(Job, r.job_id)) for r in rows]
            return ids, [(j, job.node, tuple(job.allocation["gpus"])) for j, job in order]
    finally:
        system.db.close()  # (the autouse fixture unregisters the executor)


def test_the_daemon_learns_what_ended_jobs_received_and_remembers_it_at_restart(
        tmp_path, monkeypatch):
    """The history llmos' policy estimates remaining service from: each ended job's
    service goes in once as it ends, and a restarted daemon reads each team's latest
    back from the store, counting the jobs that ended while it was down once."""
    from llmos.kernel.executors import Exit, ExitKind

    system, settings, cls = sim_system(tmp_path)
    try:
        daemon, admin = system.daemon, admin_of(system)
        jobs = system.jobs.submit_many(admin, [
            JobSpec(program="noop", team="a", resources=ResourceSpec(cpu=1, gpu=1))] * 3
            + [JobSpec(program="noop", team="a", resources=ResourceSpec(cpu=1))])
        with daemon.lock:
            daemon.step()
        for j in (jobs[0], jobs[3]):
            daemon.executor("sim-test").finish(j.id)
        with daemon.lock:
            daemon.step()
        assert daemon.history.jobs("a") == 1 and daemon.history.jobs("a", gpu=False) == 1
    finally:
        system.db.close()
    # jobs 1 and 2 were still running: at restart they are found ended
    monkeypatch.setattr(cls, "recover", lambda self, *a, **k: Exit(ExitKind.SUCCEEDED))
    again = System(settings)
    try:
        assert again.daemon.history.jobs("a") == 0
        again.daemon.start()
        again.daemon.shutdown()
        assert again.daemon.history.jobs("a") == 3
        assert again.daemon.history.jobs("a", gpu=False) == 1
    finally:
        again.db.close()


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_the_history_read_back_keeps_each_teams_latest_jobs(tmp_path, store):
    """A busy team's jobs never push a quiet team's out of what a restart reads back."""
    from contextlib import nullcontext

    from pg import fresh_database

    with (fresh_database("llmos_history") if store == "postgresql"
          else nullcontext(Settings(home=tmp_path).db_url)) as url:
        assert read_back(url) == [("busy", True, 13.0), ("busy", True, 14.0),
                                  ("quiet", True, 10.0)]


def read_back(url: str) -> list:
    """recent_services(keep=2) over a quiet team's one job and a busy team's five."""
    from datetime import timedelta

    from llmos.kernel.jobs import JobState, create_job, recent_services, transition
    from llmos.kernel.resources import Request
    from llmos.store.db import Database

    db = Database(url)
    db.upgrade()
    with db.session() as s:
        for team, n in (("quiet", 1), ("busy", 5)):
            for k in range(n):
                j = create_job(s, JobSpec(program="noop", team=team),
                               Request(cpu=1, memory_mb=100, gpu=1), "local")
                t0 = j.created_at + timedelta(seconds=100 * k)
                for state, at in ((JobState.SCHEDULED, 0), (JobState.RUNNING, 1),
                                  (JobState.SUCCEEDED, 11 + k)):
                    transition(s, j, state, at=t0 + timedelta(seconds=at))
        s.flush()
        got = recent_services(s, 2)
    db.engine.dispose()
    return sorted(got)


def test_a_dependent_waits_from_when_its_dependency_ended(tmp_path):
    """Aging and the starvation guard count a job's wait from when it could run: a job
    released by its dependency's end has waited nothing yet, live and after a restart."""
    from llmos.kernel.reconcile import reconcile

    system, settings, _ = sim_system(tmp_path)
    try:
        daemon, admin = system.daemon, admin_of(system)
        gpus = ResourceSpec(cpu=1, gpu=4)
        blockers = system.jobs.submit_many(
            admin, [JobSpec(program="noop", team="a", resources=gpus)] * 3)
        first = system.jobs.submit(admin, JobSpec(program="noop", team="a",
                                                  resources=ResourceSpec(cpu=1)))
        after = system.jobs.submit(admin, JobSpec(program="noop", team="a",
                                                  depends_on=[first.id],
                                                  resources=ResourceSpec(cpu=1, gpu=1)))
        with daemon.lock:
            daemon.step()
        assert {b.id for b in blockers} | {first.id} <= set(daemon.running)
        submitted = daemon.pending[after.id].queued_at
        ended = time.time()
        daemon.executor("sim-test").finish(first.id)
        with daemon.lock:
            daemon.step()  # released, but every GPU is held: it waits
        assert daemon.pending[after.id].waiting_for == ()
        assert daemon.pending[after.id].queued_at >= ended > submitted
    finally:
        system.db.close()
    again = System(settings)
    try:  # what start() does first, without its loop (which would place the job)
        with again.daemon.lock:
            again.daemon.nodes.sync(time.time(), force=True)
            reconcile(again.daemon)
        assert again.daemon.pending[after.id].queued_at >= ended
    finally:
        again.db.close()


def test_the_daemon_holds_the_room_it_preempts_for_for_that_job(tmp_path):
    """As the simulator, the daemon notes on the job it preempts for the node its victim
    frees (``nominated``), so that the next passes hold that room for it."""
    system, _, _ = sim_system(tmp_path)
    try:
        daemon, admin = system.daemon, admin_of(system)
        whole = ResourceSpec(cpu=1, gpu=4)
        low = system.jobs.submit_many(admin, [JobSpec(
            program="noop", team="a", priority="low", checkpointable=True,
            resources=whole)] * len(CAPS))
        with daemon.lock:
            daemon.step()
        assert {j.id for j in low} <= set(daemon.running)
        high = system.jobs.submit(admin, JobSpec(program="noop", team="a", priority="high",
                                                 resources=whole))
        with daemon.lock:
            daemon.step()
        yielding = [t for t in daemon.running.values() if t.stop]
        assert len(yielding) == 1
        assert daemon.pending[high.id].nominated == yielding[0].job.allocation.node
    finally:
        system.db.close()


def sim_system(tmp_path):
    """A System whose daemon runs on the simulated executor over CAPS (never started: the
    test steps it), with team a; and its settings and executor class."""
    from llmos import extensions
    from llmos.kernel.scheduler.sim.executor import executor_for
    from llmos.security.rbac import SYSTEM

    cls = executor_for(CAPS)
    extensions.executors.register("sim-test", cls, replace=True)
    settings = Settings(home=tmp_path / "home", executor="sim-test", tick_s=3600,
                        require_isolation="off")
    system = System(settings)
    system.daemon.nodes.sync(time.time(), force=True)
    system.identity.create_team(SYSTEM, "a")
    return system, settings, cls


def admin_of(system):
    from llmos.security.identity import ADMIN_USER
    from llmos.security.rbac import Principal
    from llmos.store.models import User

    with system.db.session() as s:
        admin_id = s.query(User).filter(User.name == ADMIN_USER).one().id
    return Principal(name=ADMIN_USER, user_id=admin_id, is_admin=True)


@pytest.fixture(autouse=True)
def _no_sim_executor_left():
    yield
    from llmos import extensions

    extensions.executors.unregister("sim-test")
