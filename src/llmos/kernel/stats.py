"""The daemon's own counters, as plain data: how long scheduling passes take, how many
jobs were preempted per team, how long jobs waited in the queue before starting, how long
they ran and how they ended.

The daemon updates them where those things happen (:mod:`llmos.kernel.daemon`); the
monitor reads them at scrape time (``monitor/metrics.py`` turns them into Prometheus
histograms and counters). The kernel imports nothing of the monitor: these are plain
buckets and sums, guarded by their own lock so a scrape never waits for the control loop.
Counts start at zero with each daemon process, as Prometheus counters do.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                21600.0, 86400.0)
RUN_BUCKETS = (1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0,
               86400.0, 259200.0)
OUTCOMES = {"SUCCEEDED": "succeeded", "FAILED": "failed", "CANCELLED": "cancelled"}


@dataclass
class Buckets:
    """One histogram: ``counts[i]`` observations fell in ``(bounds[i-1], bounds[i]]``
    (the last one above every bound), with their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = self.counts or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> tuple[list[tuple[str, int]], float]:
        """(``le`` -> count at or below it, ending with ``+Inf``), and the sum."""
        out, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
        return out, self.total

    def copy(self) -> Buckets:
        return Buckets(self.bounds, list(self.counts), self.total)


class KernelStats:
    """What the control loop did since this daemon started (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.passes = Buckets(PASS_BUCKETS)
        self.preemptions: dict[str, int] = defaultdict(int)  # team -> victims
        self.waits: dict[str, Buckets] = {}  # team -> queue wait before each start
        self.runs: dict[tuple[str, str], Buckets] = {}  # (team, outcome) -> run time
        self.finished: dict[tuple[str, str], int] = defaultdict(int)  # (team, outcome)

    def scheduled(self, seconds: float) -> None:
        """One scheduling pass took ``seconds``."""
        with self._lock:
            self.passes.observe(seconds)

    def preempted(self, team: str | None) -> None:
        with self._lock:
            self.preemptions[team or ""] += 1

    def started(self, team: str | None, queued_at: float | None, at: float) -> None:
        """An attempt started ``at`` (epoch seconds), queued since ``queued_at``."""
        if queued_at is None:
            return
        with self._lock:
            waits = self.waits.setdefault(team or "", Buckets(WAIT_BUCKETS))
            waits.observe(max(0.0, at - queued_at))

    def ended(self, team: str | None, state: str, started_at: float | None,
              at: float) -> None:
        """A job reached the terminal ``state`` at ``at``; ``started_at`` is when its
        last attempt started (None: it never ran, so no run time is observed)."""
        outcome = OUTCOMES.get(state)
        if outcome is None:
            return
        key = (team or "", outcome)
        with self._lock:
            self.finished[key] += 1
            if started_at is not None:
                runs = self.runs.setdefault(key, Buckets(RUN_BUCKETS))
                runs.observe(max(0.0, at - started_at))

    def snapshot(self) -> dict:
        """A consistent copy of every figure (for one scrape)."""
        with self._lock:
            return {
                "passes": self.passes.copy(),
                "preemptions": dict(self.preemptions),
                "waits": {k: v.copy() for k, v in self.waits.items()},
                "runs": {k: v.copy() for k, v in self.runs.items()},
                "finished": dict(self.finished),
            }
