"""Latency of a call, measured the way a benchmark should be: warm-up calls first (lazy
initialisation, allocator and cache warm-up are not latency), the garbage collector held
off while timing (as ``timeit`` does), enough repetitions for a stable 99th percentile
within a bounded time, and the number of repetitions reported beside the percentiles (a
p99 of fewer than 100 calls is close to the slowest call).

Knows nothing of models: ``fn`` is any callable taking one batch.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class Plan:
    """How long to time one batch size."""

    warmup: int = 3        # calls before timing (fewer when they outlast the budget)
    min_reps: int = 100    # at least this many timed calls (unless ``hard_cap_s`` passes)
    max_reps: int = 1000   # at most this many
    budget_s: float = 10.0  # stop once this much time is spent and min_reps are done
    hard_cap_s: float = 60.0  # stop at this time whatever the count

    @classmethod
    def scaled(cls, budget_s: float, batch: int) -> Plan:
        """The plan for a batch size within ``budget_s`` seconds: 100 calls at least at
        batch 1 (a real p99), 20 at larger batches; never more than 4x the budget."""
        if batch <= 1:
            return cls(warmup=5, min_reps=100, max_reps=2000, budget_s=budget_s,
                       hard_cap_s=4 * budget_s)
        return cls(warmup=2, min_reps=20, max_reps=500, budget_s=budget_s,
                   hard_cap_s=4 * budget_s)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation (NumPy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def time_calls(fn: Callable[[Any], Any], batches: Sequence[Any], plan: Plan) -> dict:
    """Time ``fn`` over ``batches`` (cycled): {p50_ms, p99_ms, mean_ms, reps, seconds}."""
    if not batches:
        raise ValueError("nothing to time: no batches")
    warm_until = time.perf_counter() + plan.budget_s
    for i in range(plan.warmup):  # at least one; no more than the budget allows
        fn(batches[i % len(batches)])
        if time.perf_counter() >= warm_until:
            break
    times: list[float] = []
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    try:
        while len(times) < plan.max_reps:
            batch = batches[len(times) % len(batches)]
            t0 = time.perf_counter()
            fn(batch)
            times.append(time.perf_counter() - t0)
            spent = time.perf_counter() - started
            if spent >= plan.hard_cap_s or (len(times) >= plan.min_reps
                                            and spent >= plan.budget_s):
                break
    finally:
        if was_enabled:
            gc.enable()
    spent = time.perf_counter() - started
    ordered = sorted(times)
    return {"p50_ms": 1000 * percentile(ordered, 50), "p99_ms": 1000 * percentile(ordered, 99),
            "mean_ms": 1000 * sum(times) / len(times), "reps": len(times), "seconds": spent}
