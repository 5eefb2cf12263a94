"""Canary traffic splitting and per-version counts, in the gateway's memory.

A deployment with a canary sends ``weight`` percent of its requests to the canary version
and the rest to its own (stable) version. The choice is a smooth weighted round robin per
deployment: deterministic, and as even as the weights allow at every point (at 50, one
request each in turn; at 10, one in ten). Each answer is counted for the version it came
from — requests, errors (a 5xx, or a worker that could not answer; a caller's 4xx is not
the version's fault) and latency percentiles — from the moment the canary was last set,
so that a rollout can compare the two versions over its window.

Owns no HTTP and no store: the gateway says which deployment (its id and the version
ids it routes to now) and what each answer was.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

LATENCIES = 10_000  # the most recent answers a version's percentiles are taken over
Side = Literal["stable", "canary"]


@dataclass(frozen=True)
class Route:
    """Where one request went: the deployment, which side, and the rollout it counts in."""

    deployment_id: int
    side: Side
    version_id: int
    epoch: int


@dataclass
class Tally:
    """How one version answered since the canary was last set."""

    version: int  # the registry's number
    requests: int = 0
    errors: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCIES))

    def add(self, status: int, seconds: float | None) -> None:
        self.requests += 1
        if status >= 500:
            self.errors += 1
        if seconds is not None:
            self.latencies.append(seconds)

    def summary(self) -> dict:
        ordered = sorted(self.latencies)
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "p50_s": percentile(ordered, 0.50), "p95_s": percentile(ordered, 0.95)}


def percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile of sorted values (None when there are none)."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class _Rollout:
    """One deployment's split as it is now: which versions, what weight, the round robin's
    credits and the counts."""

    stable_id: int
    canary_id: int | None
    weight: int
    epoch: int
    tallies: dict[Side, Tally]
    credit: dict[Side, int] = field(default_factory=lambda: {"stable": 0, "canary": 0})

    def same(self, stable_id: int, canary_id: int | None, weight: int) -> bool:
        return (self.stable_id, self.canary_id, self.weight) == (stable_id, canary_id, weight)

    def next_side(self) -> Side:
        """Smooth weighted round robin (nginx's): each side gains its weight, the richest
        is chosen and pays the total; ties go to the stable version."""
        if self.canary_id is None or self.weight <= 0:
            return "stable"
        weights: dict[Side, int] = {"stable": 100 - self.weight, "canary": self.weight}
        for side, w in weights.items():
            self.credit[side] += w
        side: Side = "canary" if self.credit["canary"] > self.credit["stable"] else "stable"
        self.credit[side] -= 100
        return side


class Canaries:
    """Every deployment's split and counts (thread-safe: the gateway routes on its event
    loop and the API reads from worker threads)."""

    def __init__(self):
        self._rollouts: dict[int, _Rollout] = {}
        self._epochs = 0
        self._lock = threading.Lock()

    def route(self, deployment_id: int, stable_id: int, canary_id: int | None, weight: int,
              number_of) -> Route:
        """Where the deployment's next request goes. ``number_of(version_id)`` is the
        registry's number of a version. A change of versions or weight starts new counts."""
        with self._lock:
            r = self._current(deployment_id, stable_id, canary_id, weight, number_of)
            side = r.next_side()
            return Route(deployment_id, side, r.canary_id if side == "canary" else r.stable_id,
                         r.epoch)

    def record(self, route: Route, status: int, seconds: float | None) -> None:
        """Count one answer; one that began before the canary was last set is left out."""
        with self._lock:
            r = self._rollouts.get(route.deployment_id)
            if r is not None and r.epoch == route.epoch:
                r.tallies[route.side].add(status, seconds)

    def reset(self, deployment_id: int) -> None:
        """The canary was set, cleared or completed: count afresh from now."""
        with self._lock:
            self._rollouts.pop(deployment_id, None)

    def stats(self, deployment_id: int, stable_id: int, canary_id: int | None, weight: int,
              number_of) -> dict:
        """``{"stable": {...}, "canary": {...} or None}``: each version's requests, errors,
        error rate and p50/p95 latency (seconds) since the canary was last set."""
        with self._lock:
            r = self._current(deployment_id, stable_id, canary_id, weight, number_of)
            return {"stable": r.tallies["stable"].summary(),
                    "canary": r.tallies["canary"].summary() if r.canary_id is not None
                    else None}

    def _current(self, deployment_id: int, stable_id: int, canary_id: int | None,
                 weight: int, number_of) -> _Rollout:
        r = self._rollouts.get(deployment_id)
        if r is None or not r.same(stable_id, canary_id, weight):
            self._epochs += 1
            canary_number = number_of(canary_id) if canary_id is not None else 0
            r = _Rollout(stable_id, canary_id, weight, self._epochs,
                         {"stable": Tally(number_of(stable_id)),
                          "canary": Tally(canary_number)})
            self._rollouts[deployment_id] = r
        return r
