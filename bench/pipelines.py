"""Pipeline engine benchmark: what the engine adds per step over the kernel's own job
dependencies, and the time of a fully cached rerun.

    .venv/bin/python bench/pipelines.py [--width 198]

On one in-process llmos system (the daemon's loop and the pipeline engine, as `llmos up`
runs them; a 2-cpu node), the same graph twice: one ``start`` step, ``width`` steps that
each need it (fan-out), one ``end`` step that needs them all (fan-in) — 200 no-op steps by
default (the built-in ``echo`` program).
1. baseline: the graph as kernel jobs with ``depends_on`` (submitted at once; the kernel
   releases each job when its dependencies succeed); the makespan, first submit to last end.
2. the pipeline: the same graph as a pipeline run (nothing cached); its makespan, and the
   engine's own latency per step: from the moment a step's needs had all ended (their
   jobs' end times) to the moment its job was created.
Both alternate for ``--rounds`` rounds; medians are printed.
3. a rerun of the unchanged pipeline: every step cached, no job started; wall time.
Prints the overhead per step ((pipeline makespan - baseline makespan) / steps). Targets
(issue 15): engine overhead under 20 ms per step; a cached rerun of 200 steps under 2 s.
Never fails on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from live import wait_for  # noqa: E402
from sqlalchemy import select  # noqa: E402

from llmos.config import Settings  # noqa: E402
from llmos.kernel.jobs import JobSpec, ResourceSpec  # noqa: E402
from llmos.store.models import Job  # noqa: E402
from llmos.system import System  # noqa: E402

SMALL = {"cpu": 0.1, "memory_mb": 256}


def jobs_by_id(system, ids) -> dict[int, Job]:
    with system.db.session() as s:
        return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(list(ids))))}


def baseline(system, who, width: int) -> float:
    """The graph as kernel jobs with dependencies; its makespan in seconds."""
    res = ResourceSpec(cpu=SMALL["cpu"], memory_mb=SMALL["memory_mb"])
    t0 = time.time()
    [start] = system.jobs.submit_many(who, [JobSpec(program="echo", params={"message": "s"},
                                                    resources=res)])
    middle = system.jobs.submit_many(who, [JobSpec(program="echo", params={"message": str(i)},
                                                   resources=res, depends_on=[start.id])
                                           for i in range(width)])
    [end] = system.jobs.submit_many(who, [JobSpec(program="echo", params={"message": "e"},
                                                  resources=res,
                                                  depends_on=[j.id for j in middle])])
    done = wait_for(lambda: (j := jobs_by_id(system, [end.id])[end.id]).state in (
        "SUCCEEDED", "FAILED", "CANCELLED") and j, timeout=900, interval=0.1,
        what="the baseline graph")
    assert done.state == "SUCCEEDED", done.reason
    return done.ended_at.timestamp() - t0


def spec(width: int) -> dict:
    return {"name": "bench-fan", "params": {"items": list(range(width))},
            "steps": {"start": {"program": "echo", "params": {"message": "s"},
                                "resources": SMALL},
                      "fan": {"program": "echo", "map": "${params.items}",
                              "params": {"message": "${item}"}, "resources": SMALL,
                              "after": ["start"]},
                      "end": {"program": "echo", "params": {"message": "e"},
                              "resources": SMALL, "after": ["fan"]}}}


def finished(system, who, run_id: int):
    return wait_for(lambda: (r := system.pipelines.get_run(who, run_id)).state in (
        "SUCCEEDED", "FAILED", "CANCELLED") and r, timeout=900, interval=0.02,
        what="the pipeline run")


def step_latencies(system, run) -> list[float]:
    """Per step: its job's creation minus the end of the last job it needed."""
    rows = {r.name: r for r in run.steps}
    jobs = jobs_by_id(system, [r.job_id for r in run.steps if r.job_id])
    ended = lambda name: jobs[rows[name].job_id].ended_at.timestamp()  # noqa: E731
    fan = [r for r in run.steps if r.step == "fan" and r.index is not None]
    out = [jobs[r.job_id].created_at.timestamp() - ended("start") for r in fan]
    last = max(jobs[r.job_id].ended_at.timestamp() for r in fan)
    out.append(jobs[rows["end"].job_id].created_at.timestamp() - last)
    return out


def pipeline_run(system, who, width: int) -> tuple[float, list[float]]:
    """One run of the graph with nothing cached: its makespan and per-step latencies."""
    t0 = time.time()
    run = finished(system, who, system.pipelines.run(who, spec(width), no_cache=True).id)
    assert run.state == "SUCCEEDED", run.reason
    jobs = jobs_by_id(system, [r.job_id for r in run.steps if r.job_id])
    return max(j.ended_at.timestamp() for j in jobs.values()) - t0, step_latencies(system, run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=198, help="steps between start and end")
    ap.add_argument("--rounds", type=int, default=3, help="baseline/pipeline pairs")
    args = ap.parse_args()
    steps = args.width + 2
    bases, mades, lat = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        boots = []
        system = System(Settings(home=Path(tmp) / "home", cpus=2, tick_s=0.05),
                        on_bootstrap=boots.append)
        who = system.tokens.authenticate(boots[0].token)
        system.start()
        try:
            for _ in range(args.rounds):  # alternated: the machine's drift hits both
                bases.append(baseline(system, who, args.width))
                made, latencies = pipeline_run(system, who, args.width)
                mades.append(made)
                lat += latencies
            t1 = time.perf_counter()
            again = finished(system, who, system.pipelines.run(who, spec(args.width)).id)
            cached_s = time.perf_counter() - t1
            states = {r.state for r in again.steps}
        finally:
            asyncio.run(system.close())
    base, made = statistics.median(bases), statistics.median(mades)
    print(f"graph: 1 -> {args.width} -> 1 ({steps} no-op steps, echo), 2-cpu node, "
          f"{args.rounds} rounds (medians)")
    print(f"baseline, kernel jobs with depends_on: makespan {base:.2f} s "
          f"({', '.join(f'{b:.1f}' for b in bases)})")
    print(f"pipeline run, nothing cached:          makespan {made:.2f} s "
          f"({', '.join(f'{m:.1f}' for m in mades)}; ratio to baseline {made / base:.2f})")
    print(f"engine overhead per step: {(made - base) / steps * 1000:+.1f} ms "
          "(makespan difference / steps; target < 20 ms)")
    print(f"engine latency per step (its needs ended -> its job created; the fan-out's "
          f"{args.width} jobs are made in one pass): p50 {statistics.median(lat) * 1000:.0f} "
          f"ms, max {max(lat) * 1000:.0f} ms, i.e. {statistics.median(lat) / args.width * 1000:.1f}"
          " ms of engine time per step")
    print(f"cached rerun of {steps} steps: {cached_s:.2f} s, step states {sorted(states)} "
          "(target < 2 s)")


if __name__ == "__main__":
    main()
