"""`llmos sim TRACE`: replay a job trace on a simulated cluster under one or more
scheduling policies and compare them (the simulator: :mod:`llmos.kernel.scheduler.sim`).
Runs locally with the daemon's own scheduler code; needs no daemon and no token."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer
from rich.console import Console

from llmos.cli.errors import UsageError

# the table has 14 columns (15 with "refused"): wide enough when piped to a file, too (rich
# assumes 80 there)
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)

HELP = """Replay a job trace on a simulated cluster under scheduling policies, and compare
them: average / p50 / p99 job completion time (JCT), queueing delay, makespan, GPU
utilisation, preemptions, maximum slowdown, share of jobs that waited over 24 h.

The daemon's own scheduler (the same stages) decides, on a simulated clock; runs locally,
needs no daemon. With --out, writes summary.json, jct_cdf.png and utilisation.png there.

\b
Trace formats (by the file name: .jsonl/.ndjson is JSON lines, anything else CSV):
  CSV (Microsoft Philly, as condensed by Pollux): a header, then one job a line:
    timestamp  submission, YYYY-MM-DD HH:MM:SS (UTC) or epoch seconds
    duration   seconds it runs once started
    num_gpus   GPUs it needs (all at once: a gang)
    gpu_time   duration x num_gpus (optional, not used)
    cluster    virtual cluster: the job's team (--vc picks one)
  JSON lines: one object a line ('#' lines and blank lines skipped):
    submit         required: epoch seconds or a date text
    duration       required: run time in seconds
    id             int (default: the line's rank)
    gpus           int (0)
    cpu            float (default: the node's cpus per GPU x gpus, else 1)
    memory_mb      int (likewise; 1024 without GPUs)
    priority       low | normal | high (normal)
    team           string (none)
    checkpointable true | false (true: it may be preempted, keeping its last checkpoint)
    time_limit_s   the declared limit (backfill plans with it; stopped there)
\b
Cluster YAML (--cluster):
  nodes:
    - {name: a100, count: 16, gpus: 8, cpus: 64, memory_gb: 512, labels: {gpu: a100}}

A malformed line is reported with its line number; the exit status is 1 for bad input
(a file, a row; a run that makes no progress: a livelock), 2 for bad usage. Numbers must
be finite: durations and time limits up to ten years, up to 4096 GPUs a job; up to
100,000 nodes of up to 1024 GPUs and 4096 cpus; --tick-s at least 1."""


def sim(
    trace: Path = typer.Argument(..., help="The trace file (CSV or JSON lines, see above)."),
    policy: str = typer.Option("fifo,sjf,tiresias,llmos-easy,llmos", "--policy", "-p",
                               help="Comma-separated policies to compare."),
    nodes: int | None = typer.Option(None, "--nodes", help="Nodes in the cluster "
                                        "(default: enough GPUs for the trace's average "
                                        "GPU demand, at least the largest job)."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node"),
    cpus_per_node: int = typer.Option(64, "--cpus-per-node"),
    memory_gb: float = typer.Option(512, "--memory-gb", help="Memory per node (GB)."),
    cluster: Path | None = typer.Option(None, "--cluster",
                                           help="The cluster's shape as YAML (see above); "
                                           "instead of the --nodes flags."),
    vc: str | None = typer.Option(None, "--vc", help="Only this virtual cluster's jobs "
                                     "(the CSV 'cluster' column; JSON 'team')."),
    start: str | None = typer.Option(None, "--start", help="Only jobs submitted at or "
                                        "after this time (date text or epoch seconds)."),
    end: str | None = typer.Option(None, "--end", help="... and before this time."),
    load: float = typer.Option(1.0, "--load", help="Load factor: inter-arrival times are "
                               "divided by it (2.0: jobs arrive twice as fast)."),
    checkpoint_interval_s: float = typer.Option(
        1800.0, "--checkpoint-interval-s", help="Progress between a job's checkpoints; a "
        "preempted job loses the work since its last one (0: loses nothing)."),
    restore_s: float = typer.Option(60.0, "--restore-s", help="Cost of resuming from a "
                                    "checkpoint (seconds)."),
    preempt_grace_s: float = typer.Option(
        30.0, "--preempt-grace-s", help="Seconds a preempted job takes to yield (no other "
        "preemption meanwhile, as in the daemon)."),
    tick_s: float = typer.Option(300.0, "--tick-s", help="While jobs wait, a scheduling "
                                 "pass at least this often (simulated seconds)."),
    round_s: float = typer.Option(
        0.0, "--round-s", help="Passes only at multiples of this many seconds of the "
        "simulated clock (scheduling rounds, at least 1 s: far fewer passes over a long, "
        "busy trace; what ends or arrives between two rounds waits for the next); 0: a "
        "pass at every event, as the daemon does."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N jobs "
                                        "(after the filters)."),
    out_dir: Path | None = typer.Option(None, "--out", help="Write summary.json and the "
                                           "PNG plots in this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from llmos.kernel.scheduler import sim as simpkg
    from llmos.kernel.scheduler.sim import report
    from llmos.kernel.scheduler.sim.trace import parse_time

    names = [p.strip() for p in policy.split(",") if p.strip()]
    known = simpkg.known_policies()
    unknown = [p for p in names if p not in known]
    if not names or unknown:
        raise UsageError(f"unknown policy {', '.join(unknown) or '(none given)'} "
                         f"(known: {', '.join(known)})")
    _check_numbers(load, tick_s, checkpoint_interval_s, restore_s, preempt_grace_s,
                   round_s)
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    try:
        window = [parse_time(t) if t else None for t in (start, end)]
    except ValueError as e:
        raise UsageError(f"--start/--end: not a date or epoch seconds ({e})") from None
    try:
        jobs = simpkg.select(simpkg.load_trace(trace), vc, *window, load=load, limit=limit)
        shape = _cluster(jobs, cluster, nodes, gpus_per_node, cpus_per_node, memory_gb)
    except (simpkg.TraceError, simpkg.ClusterError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(1) from None
    params = simpkg.SimParams(checkpoint_interval_s=checkpoint_interval_s,
                              restore_s=restore_s, tick_s=tick_s,
                              stop_s=preempt_grace_s, round_s=round_s)
    results, summaries = [], []
    for name in names:
        with err.status(f"simulating {len(jobs):,} jobs under {name} ..."):
            try:
                result = simpkg.simulate(jobs, shape.capacities(), name, params)
            except simpkg.NoProgress as e:
                err.print(f"[red]error:[/] {e}")
                raise typer.Exit(1) from None
        results.append(result)
        summaries.append(report.summarize(result))
    meta = {"trace": str(trace), "jobs": len(jobs), "vc": vc, "load": load,
            "cluster": shape.describe(), "gpus": shape.gpus,
            "checkpoint_interval_s": checkpoint_interval_s, "restore_s": restore_s,
            "round_s": round_s}
    if as_json:
        out.print_json(json.dumps({"meta": meta, "policies": summaries}))
    else:
        out.print(report.table(summaries, f"{len(jobs):,} jobs on {shape.describe()}"
                               f", load x{load:g}"))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.write_json(out_dir / "summary.json", summaries, meta)
        paths = report.plot(results, out_dir, f"{len(jobs):,} jobs, load x{load:g}")
        err.print(f"wrote {out_dir / 'summary.json'}, " + ", ".join(str(p) for p in paths))


sim.__doc__ = HELP


def _check_numbers(load: float, tick_s: float, checkpoint_interval_s: float,
                   restore_s: float, preempt_grace_s: float, round_s: float = 0.0) -> None:
    """UsageError for a simulation flag that is not a finite number within its bounds."""
    from llmos.kernel.scheduler.sim.trace import MAX_SECONDS

    if not 0 < load <= 1e6:  # NaN compares False: refused too
        raise UsageError("--load must be above 0 (and at most 1,000,000)")
    if not 1 <= tick_s <= MAX_SECONDS:
        raise UsageError("--tick-s must be at least 1 (simulated seconds) and at most ten "
                         "years")
    if not (round_s == 0 or 1 <= round_s <= MAX_SECONDS):
        raise UsageError(f"--round-s must be 0 (no rounds) or from 1 to ten years "
                         f"(315,360,000 s), not {round_s:g}")
    for value, what in ((checkpoint_interval_s, "--checkpoint-interval-s"),
                        (restore_s, "--restore-s"), (preempt_grace_s, "--preempt-grace-s")):
        if not 0 <= value <= MAX_SECONDS:
            raise UsageError(f"{what} must be from 0 to ten years (315,360,000 s), not "
                             f"{value:g}")


def _cluster(jobs, cluster, nodes, gpus_per_node, cpus_per_node, memory_gb):
    from llmos.kernel.scheduler import sim as simpkg
    from llmos.kernel.scheduler.sim.cluster import LIMITS

    if cluster is not None:
        if nodes is not None:
            raise UsageError("give --cluster or --nodes, not both")
        return simpkg.load_cluster(cluster)
    for value, key, flag in ((gpus_per_node, "gpus", "--gpus-per-node"),
                             (cpus_per_node, "cpus", "--cpus-per-node"),
                             (memory_gb, "memory_gb", "--memory-gb"),
                             (nodes, "count", "--nodes")):
        least, most, _ = LIMITS[key]
        if value is not None and not least <= value <= most:  # NaN compares False
            raise UsageError(f"{flag} must be from {least:g} to {most:,}, not {value:g}")
    if nodes is None:
        nodes = default_nodes(jobs, gpus_per_node)
    return simpkg.from_flags(nodes, gpus_per_node, cpus_per_node, memory_gb)


def default_nodes(jobs, gpus_per_node: int) -> int:
    """Enough nodes for the trace's average GPU demand, and for its largest job; a
    ClusterError when that is more nodes than the simulator takes."""
    from llmos.kernel.scheduler import sim as simpkg
    from llmos.kernel.scheduler.sim.cluster import MAX_NODES
    from llmos.kernel.scheduler.sim.trace import average_gpu_demand

    if gpus_per_node < 1:
        return 1
    demand = average_gpu_demand(jobs)
    largest = max(jobs, key=lambda j: j.gpus)
    nodes = max(1, math.ceil(max(demand, largest.gpus) / gpus_per_node))
    if nodes > MAX_NODES:
        where = f"line {largest.line}" if largest.line else f"job {largest.id}"
        raise simpkg.ClusterError(
            f"the trace's average GPU demand ({demand:,.0f} GPUs) needs {nodes:,} nodes of "
            f"{gpus_per_node} GPUs, over the {MAX_NODES:,} the simulator takes (its largest "
            f"job, {where}, needs {largest.gpus:,} GPUs): give --nodes or --cluster, or "
            "--vc/--start/--end/--limit to take part of the trace")
    return nodes
