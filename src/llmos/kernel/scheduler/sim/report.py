"""Figures from simulation results: per policy, the job completion time (JCT: submission to
end) average / p50 / p99, queueing delay (time spent queued, every attempt together)
average / p99, makespan (first submission to last end), GPU utilisation (GPU-seconds held
over GPUs × makespan), preemptions, maximum slowdown (JCT / run time) and the share of
jobs that waited more than 24 h; as a rich table, as JSON, and as PNG plots (JCT CDF of
every policy, GPU utilisation over time). matplotlib is imported only to draw.

Jobs refused (larger than the cluster) and jobs that never ran count apart; the figures
cover the jobs that ended (succeeded, or stopped at their declared time limit).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from llmos.kernel.scheduler.sim.engine import (
    NEVER_RAN,
    REFUSED,
    SUCCEEDED,
    TIMED_OUT,
    SimResult,
)

DAY_S = 86400.0

# Column: (key, header, format)
COLUMNS = (
    ("policy", "policy", "{}"),
    ("avg_jct_s", "avg JCT", "dur"),
    ("p50_jct_s", "p50 JCT", "dur"),
    ("p99_jct_s", "p99 JCT", "dur"),
    ("avg_queue_s", "avg queue", "dur"),
    ("p99_queue_s", "p99 queue", "dur"),
    ("makespan_s", "makespan", "dur"),
    ("gpu_utilisation", "GPU util", "{:.1%}"),
    ("preemptions", "preempt", "{:,}"),
    ("max_slowdown", "max slowdown", "{:,.0f}"),
    ("waited_over_24h", "waited >24h", "{:.2%}"),
    ("never_ran", "never ran", "{:,}"),
    ("pass_ms_mean", "pass ms", "{:.2f}"),
    ("wall_s", "sim s", "{:.1f}"),
)


def summarize(result: SimResult) -> dict:
    """The figures of one policy's run (plain JSON-able values)."""
    ended = [j for j in result.jobs if j.outcome in (SUCCEEDED, TIMED_OUT)]
    jct = np.array([j.end - j.trace.submit for j in ended], dtype=float)
    queue = np.array([j.waited for j in ended], dtype=float)
    run = np.array([j.trace.duration for j in ended], dtype=float)
    first = min((j.trace.submit for j in result.jobs), default=result.start)
    last = max((j.end for j in ended), default=first)
    makespan = max(0.0, last - first)
    held = _gpu_seconds(result.busy, last)
    passes = np.array(result.pass_s or [0.0]) * 1000

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if len(a) else 0.0

    return {
        "policy": result.policy,
        "jobs": len(result.jobs),
        "ended": len(ended),
        "succeeded": sum(1 for j in ended if j.outcome == SUCCEEDED),
        "timed_out": sum(1 for j in ended if j.outcome == TIMED_OUT),
        "refused": sum(1 for j in result.jobs if j.outcome == REFUSED),
        "never_ran": sum(1 for j in result.jobs if j.outcome == NEVER_RAN),
        "avg_jct_s": float(jct.mean()) if len(jct) else 0.0,
        "p50_jct_s": pct(jct, 50),
        "p99_jct_s": pct(jct, 99),
        "avg_queue_s": float(queue.mean()) if len(queue) else 0.0,
        "p99_queue_s": pct(queue, 99),
        "max_queue_s": float(queue.max()) if len(queue) else 0.0,
        "makespan_s": makespan,
        "gpu_utilisation": held / (result.gpus * makespan) if result.gpus and makespan else 0.0,
        "preemptions": result.preemptions,
        "lost_gpu_hours": sum(j.lost * j.request.gpu for j in result.jobs) / 3600,
        "max_slowdown": float((jct / run).max()) if len(jct) else 0.0,
        "waited_over_24h": float((queue > DAY_S).mean()) if len(queue) else 0.0,
        "passes": result.passes,
        "pass_ms_mean": float(passes.mean()),
        "pass_ms_p99": pct(passes, 99),
        "pass_ms_max": float(passes.max()),
        "wall_s": result.wall_s,
    }


def _gpu_seconds(busy: list[tuple[float, int]], until: float) -> float:
    total, prev_t, prev_b = 0.0, None, 0
    for t, b in busy:
        if prev_t is not None:
            total += prev_b * (min(t, until) - prev_t) if t > prev_t else 0.0
        prev_t, prev_b = t, b
    return total


def fmt_duration(seconds: float) -> str:
    if seconds >= DAY_S:
        return f"{seconds / DAY_S:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.0f}s"


REFUSED_COLUMN = ("refused", "refused", "{:,}")  # shown only when some job was refused


def table(summaries: list[dict], title: str = ""):
    """A rich table: one row per policy (a "refused" column when some job was refused:
    larger than the cluster)."""
    from rich.table import Table

    columns = list(COLUMNS)
    if any(s.get("refused") for s in summaries):
        at = next(i for i, c in enumerate(columns) if c[0] == "never_ran")
        columns.insert(at + 1, REFUSED_COLUMN)
    t = Table(title=title or None)
    for key, header, _ in columns:
        t.add_column(header, justify="left" if key == "policy" else "right")
    for s in summaries:
        t.add_row(*(_cell(s[key], form) for key, _, form in columns))
    return t


def _cell(value, form: str) -> str:
    return fmt_duration(value) if form == "dur" else form.format(value)


def write_json(path: Path, summaries: list[dict], meta: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "policies": summaries}, indent=2) + "\n")


def plot(results: list[SimResult], out: Path, title: str = "") -> list[Path]:
    """``jct_cdf.png`` and ``utilisation.png`` in ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "jct_cdf.png", out / "utilisation.png"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        jct = np.sort([j.end - j.trace.submit for j in r.jobs
                       if j.outcome in (SUCCEEDED, TIMED_OUT)])
        if len(jct):
            ax.plot(np.maximum(jct, 1.0), np.arange(1, len(jct) + 1) / len(jct), label=r.policy)
    ax.set_xscale("log")
    ax.set_xlabel("job completion time (s, log scale)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title(f"JCT CDF{' - ' + title if title else ''}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        hours, util = utilisation_series(r)
        if len(hours):
            ax.plot(hours, util, label=r.policy, linewidth=1)
    ax.set_xlabel("time since the first submission (days)")
    ax.set_ylabel("GPU utilisation")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"GPU utilisation{' - ' + title if title else ''}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def utilisation_series(r: SimResult, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(days since the start, mean share of GPUs held) over ``points`` equal buckets."""
    if not r.busy or not r.gpus:
        return np.array([]), np.array([])
    times = np.array([t for t, _ in r.busy] + [r.end], dtype=float)
    held = np.array([b for _, b in r.busy] + [r.busy[-1][1]], dtype=float)
    start, end = r.start, max(r.end, r.start + 1)
    edges = np.linspace(start, end, points + 1)
    # GPU-seconds held up to each edge: integrate the step function.
    cum = np.concatenate([[0.0], np.cumsum(held[:-1] * np.diff(times))])

    def integral(x: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(times, x, side="right") - 1, 0, len(times) - 1)
        return cum[i] + held[i] * (x - times[i]) * (x >= times[0])

    per = np.diff(integral(edges)) / (np.diff(edges) * r.gpus)
    return (edges[:-1] - start) / DAY_S, per
