"""Autoscaling and drain replacement of serving pools: pure decisions, no I/O.

The serving controller (``serve.controller``) asks :func:`decide` each pass how many
workers a pool with autoscaling (a deployment with ``max_replicas``) should have, from its
load — requests in flight per worker as the gateway counts them (or, when larger, what the
workers report running and queued in their heartbeats), requests waiting for a worker, the
recent p99 latency — and the pool's previous decision, in the style of Ray Serve and
KServe:

- **up** at once when the load per replica is above the target (``target_inflight``,
  default half the pool's ``max_batch``), to as many replicas as the load needs, or one
  more when the p99 latency is above ``target_p99_s`` (when set);
- **down** one replica at a time, only after the load stayed below half the target for
  ``down_after_s`` (hysteresis: a load between half and the whole target changes nothing,
  so the count does not flap);
- to **zero** only when ``min_replicas`` is 0 and no request came for ``idle_s``; a
  request to a pool at zero (a cold start) asks for one replica at once;
- never below ``min_replicas`` nor above ``max_replicas``.

:func:`plan_workers` decides which worker jobs to start and stop: the wanted count, with
workers on a draining node replaced first and stopped only once their replacements are
ready (make before break).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DOWN_AFTER_S = 30.0  # a stable period below half the target before each step down
COLD_START_S = 30.0  # how long a request waits for a pool's first worker
WINDOW_S = 60.0  # the p99 latency is of requests that ended this recently


@dataclass(frozen=True)
class Tuning:
    """The daemon-wide knobs (settings ``LLMOS_SERVE_*``)."""

    target_inflight: float | None = None  # None: half of the pool's max_batch
    down_after_s: float = DOWN_AFTER_S
    cold_start_s: float = COLD_START_S
    target_p99_s: float | None = None  # None: latency does not scale

    @classmethod
    def from_settings(cls, settings) -> Tuning:
        return cls(target_inflight=settings.serve_target_inflight,
                   down_after_s=settings.serve_scale_down_s,
                   cold_start_s=settings.serve_cold_start_s,
                   target_p99_s=settings.serve_target_p99_s)


@dataclass(frozen=True)
class Policy:
    """One pool's bounds and targets (from its deployments and the tuning)."""

    min_replicas: int
    max_replicas: int
    idle_s: float | None  # None: never to zero
    target_inflight: float
    down_after_s: float = DOWN_AFTER_S
    target_p99_s: float | None = None


@dataclass(frozen=True)
class Load:
    """What a pool carries now."""

    inflight: int = 0  # forwarded and not ended (gateway), or running+queued (workers)
    waiting: int = 0  # requests waiting for a ready worker (cold start)
    idle_for_s: float = 0.0  # since the last request arrived
    p99_s: float | None = None


@dataclass(frozen=True)
class Scale:
    """A pool's decision: how many replicas, why, and since when the load is low."""

    desired: int
    reason: str
    low_since: float | None = None


def policy_of(deployments: list, tuning: Tuning) -> Policy | None:
    """The autoscaling policy of a pool's deployments, or None when none autoscales (a
    fixed ``replicas``). A fixed deployment's replicas is a floor for the others."""
    if not any(d.max_replicas for d in deployments):
        return None
    low = max(d.min_replicas if d.max_replicas and d.min_replicas is not None
              else d.replicas for d in deployments)
    high = max(max(d.max_replicas or d.replicas for d in deployments), low)
    idles = [d.idle_s for d in deployments if d.max_replicas]
    target = tuning.target_inflight or max(1.0, min(d.max_batch for d in deployments) / 2)
    return Policy(min_replicas=low, max_replicas=high,
                  idle_s=min(idles) if low == 0 and all(i is not None for i in idles) else None,
                  target_inflight=target, down_after_s=tuning.down_after_s,
                  target_p99_s=tuning.target_p99_s)


def decide(policy: Policy, load: Load, last: Scale, now: float) -> Scale:
    """The pool's replicas after this pass (see the module's docstring)."""
    current = last.desired
    demand = load.inflight + load.waiting
    if current == 0:
        if demand or (policy.idle_s is not None and load.idle_for_s < policy.idle_s):
            return _clamp(policy, max(1, policy.min_replicas), "cold start: a request arrived")
        return _clamp(policy, 0, last.reason)
    per = demand / current
    if per > policy.target_inflight:
        need = math.ceil(demand / policy.target_inflight)
        return _clamp(policy, max(need, current),
                      f"{demand} request(s) in flight, {per:.1f} per replica > target "
                      f"{policy.target_inflight:g}")
    if (policy.target_p99_s is not None and load.p99_s is not None and demand
            and load.p99_s > policy.target_p99_s):
        return _clamp(policy, current + 1, f"p99 latency {load.p99_s:.2f} s > target "
                      f"{policy.target_p99_s:g} s")
    if (policy.min_replicas == 0 and policy.idle_s is not None and not demand
            and load.idle_for_s >= policy.idle_s):
        return _clamp(policy, 0, f"scaled to zero: no request for {load.idle_for_s:.0f} s")
    if per >= policy.target_inflight / 2:  # the dead band: no change, no clock
        return _clamp(policy, current, last.reason)
    low_since = last.low_since if last.low_since is not None else now
    if now - low_since >= policy.down_after_s and current > max(1, policy.min_replicas):
        return _clamp(policy, current - 1,
                      f"{per:.1f} in flight per replica < {policy.target_inflight / 2:g} "
                      f"for {now - low_since:.0f} s: one step down", low_since=now)
    return _clamp(policy, current, last.reason, low_since=low_since)


def _clamp(policy: Policy, n: int, reason: str, low_since: float | None = None) -> Scale:
    if n < policy.min_replicas:
        return Scale(policy.min_replicas, f"at min_replicas {policy.min_replicas}", low_since)
    if n > policy.max_replicas:
        return Scale(policy.max_replicas, f"{reason} (capped at max_replicas "
                     f"{policy.max_replicas})", low_since)
    return Scale(n, reason, low_since)


def initial(deployments: list, policy: Policy) -> Scale:
    """A pool's first decision (a new pool, or a daemon restart): its replicas as deployed."""
    start = max(d.replicas for d in deployments)
    return _clamp(policy, start, f"deployed with {start} replica(s)")


@dataclass(frozen=True)
class WorkerJob:
    id: int
    on_draining_node: bool
    ready: bool  # registered with the gateway (serving)


@dataclass(frozen=True)
class Plan:
    start: int  # worker jobs to submit
    stop: list[int]  # worker jobs to cancel
    replacing: list[int]  # jobs on draining nodes kept until their replacements are ready


def plan_workers(jobs: list[WorkerJob], want: int) -> Plan:
    """Which workers to start and stop so that ``want`` serve from nodes that take work.

    Workers on a draining node do not count towards ``want``: their replacements start
    first (the scheduler places them on ready nodes), and they stop only while enough
    workers stay ready without them — never a moment with fewer ready workers than
    wanted, when the cluster has room. One not ready yet is stopped at once."""
    keep = sorted((j for j in jobs if not j.on_draining_node), key=lambda j: j.id)
    draining = sorted((j for j in jobs if j.on_draining_node), key=lambda j: j.id)
    # scaled down: the newest go first, those not serving yet before those that are
    extra = sorted(keep, key=lambda j: (not j.ready, j.id), reverse=True)[
        :max(0, len(keep) - want)]
    extra_ids = {j.id for j in extra}
    stop = [j.id for j in extra]
    spare = sum(j.ready for j in keep if j.id not in extra_ids) + sum(
        j.ready for j in draining) - want
    replacing = []
    for j in draining:
        if not j.ready or spare > 0 or want == 0:
            stop.append(j.id)
            spare -= j.ready
        else:
            replacing.append(j.id)
    return Plan(start=max(0, want - (len(keep) - len(extra))), stop=stop, replacing=replacing)
