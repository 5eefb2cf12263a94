"""What each kind of alert rule looks at: one function per kind, answering which subjects
(keys) break the rule now, each with a value, a message and the team it concerns (None:
administrators only — nodes, GPUs, addresses, tokens).

Inputs are read, never changed: the store (pending and ended jobs), the sampler's latest
samples (node memory, GPU use), the gateway's request-time histogram (deployment
latency, windowed by :class:`LatencyWindow`) and the gate's security signals. The engine
(``monitor/alerts.py``) decides firing and resolving.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from llmos.security.rbac import ALL_TEAMS
from llmos.store.models import Job, utcnow


@dataclass(frozen=True)
class Finding:
    value: float
    message: str
    team: str | None = None


@dataclass
class Inputs:
    """Where the checks read from (any may be None: its rules then find nothing)."""

    db: object = None
    signals: object = None
    sampler: object = None  # monitor.sampler: .latest()
    latency: LatencyWindow | None = None


def job_waiting(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    bound = p.bound_s
    cutoff = utcnow() - timedelta(seconds=bound)
    with inputs.db.session() as s:
        rows = s.execute(select(Job.id, Job.team, Job.name, Job.queued_at, Job.reason)
                         .where(Job.state == "PENDING", Job.queued_at <= cutoff)
                         .order_by(Job.id).limit(1000)).all()
    current = utcnow()
    out = {}
    for job_id, team, name, queued_at, reason in rows:
        waited = (current - queued_at).total_seconds()
        label = f"job {job_id}" + (f" ({name})" if name else "")
        out[str(job_id)] = Finding(round(waited, 1), f"{label} has waited {waited:.0f} s "
                                   f"(bound {bound:g} s): {reason or 'pending'}", team)
    return out


def failure_rate(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    since = utcnow() - timedelta(seconds=p.window_s)
    with inputs.db.session() as s:
        rows = s.execute(select(Job.team, Job.state, func.count())
                         .where(Job.ended_at >= since, Job.state.in_(("SUCCEEDED", "FAILED")))
                         .group_by(Job.team, Job.state)).all()
    ended: dict[str | None, dict[str, int]] = {}
    for team, state, count in rows:
        ended.setdefault(team, {})[state] = count
    out = {}
    for team, counts in ended.items():
        failed, total = counts.get("FAILED", 0), sum(counts.values())
        if total >= p.min_jobs and failed / total > p.threshold:
            out[team or "-"] = Finding(round(failed / total, 3), f"{failed} of {total} jobs "
                                       f"of team {team} failed in {p.window_s:g} s "
                                       f"(threshold {p.threshold:.0%})", team)
    return out


def node_memory(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    out = {}
    for node, u in _latest(inputs, "nodes").items():
        used, total = u.memory_mb, (u.extra or {}).get("memory_total_mb")
        if used is None or not total:
            continue
        percent = 100 * used / total
        if percent > p.percent:
            out[node] = Finding(round(percent, 1), f"node {node} uses {percent:.0f} % of its "
                                f"memory (bound {p.percent:g} %)")
    return out


def gpu_idle(p, inputs: Inputs, now: float, state: dict) -> dict[str, Finding]:
    """GPUs allocated to a job and below ``below`` utilisation for ``window_s``; ``state``
    (kept by the engine per rule) remembers since when each has been idle. The alert
    belongs to the job's team."""
    idle_since = state.setdefault("idle_since", {})
    out, seen = {}, set()
    jobs = _latest(inputs, "jobs")
    for gpu, u in _latest(inputs, "gpus").items():
        job = (u.extra or {}).get("job")
        if u.gpu_util is None or job is None or u.gpu_util >= p.below:
            continue
        seen.add(gpu)
        since = idle_since.setdefault(gpu, now)
        if now - since >= p.window_s:
            out[gpu] = Finding(round(u.gpu_util, 3), f"GPU {gpu} is allocated to job {job} "
                               f"but {u.gpu_util:.0%} busy for {now - since:.0f} s "
                               f"(below {p.below:.0%})", _team_of(inputs, jobs, job))
    for gpu in set(idle_since) - seen:
        del idle_since[gpu]
    return out


def _team_of(inputs: Inputs, jobs: dict, job) -> str | None:
    """The team of the job holding a GPU: from the sampler's job rows, else the store
    (the sampler's GPU rows carry no team, only ``extra["job"]``)."""
    measured = jobs.get(job) or jobs.get(str(job))
    if measured is not None and measured.team is not None:
        return measured.team
    if inputs.db is None:
        return None
    try:
        job_id = int(job)
    except (TypeError, ValueError):
        return None
    with inputs.db.session() as s:
        return s.scalar(select(Job.team).where(Job.id == job_id))


def deployment_latency(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    if inputs.latency is None:
        return {}
    out = {}
    for (team, name), (count, p99) in inputs.latency.p99(p.window_s, now).items():
        if p.deployment and name != p.deployment:
            continue
        if count >= p.min_requests and p99 > p.p99_s:
            out[f"{team}/{name}"] = Finding(round(p99, 4), f"deployment {name} (team {team}): "
                                            f"p99 {p99:.3f} s over {count} requests in "
                                            f"{p.window_s:g} s (bound {p.p99_s:g} s)", team)
    return out


def auth_failures(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    return {address: Finding(n, f"{n} failed authentications from {address} in "
                             f"{p.window_s:g} s (bound {p.count})")
            for address, n in inputs.signals.failures_by_address(p.window_s).items()
            if n >= p.count}


def token_new_address(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    out = {}
    for key, (token, address, before) in inputs.signals.new_addresses(p.hold_s).items():
        out[key] = Finding(1, f"token {token}... used from a new address {address} "
                           f"(before: {', '.join(before)})")
    return out


def artifact_downloads(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    return {token: Finding(n, f"token {token}... downloaded {n} artifacts in "
                           f"{p.window_s:g} s (bound {p.count})")
            for token, n in inputs.signals.downloads_by_token(p.window_s).items()
            if n > p.count}


def admin_cross_team_reads(p, inputs: Inputs, now: float) -> dict[str, Finding]:
    """An administrator token that read objects of more than ``teams`` teams it is no
    member of; a list over every team (``rbac.ALL_TEAMS``: an unrestricted administrator
    listing jobs, events, ...) counts as reading every team, so it fires too."""
    out = {}
    for token, teams in inputs.signals.admin_teams_by_token(p.window_s).items():
        every = ALL_TEAMS in teams
        named = sorted(teams - {ALL_TEAMS})
        if not every and len(named) <= p.teams:
            continue
        shown = ", ".join(named[:10])
        if every:
            message = (f"administrator token {token}... listed the objects of every team "
                       f"in {p.window_s:g} s (bound {p.teams})"
                       + (f"; and read objects of {shown}" if shown else ""))
        else:
            message = (f"administrator token {token}... read objects of {len(named)} teams "
                       f"in {p.window_s:g} s (bound {p.teams}): {shown}")
        out[token] = Finding(len(named), message)
    return out


CHECKS = {"job_waiting": job_waiting, "failure_rate": failure_rate,
          "node_memory": node_memory, "gpu_idle": gpu_idle,
          "deployment_latency": deployment_latency, "auth_failures": auth_failures,
          "token_new_address": token_new_address, "artifact_downloads": artifact_downloads,
          "admin_cross_team_reads": admin_cross_team_reads}
STATEFUL = frozenset({"gpu_idle"})
NEEDS = {"job_waiting": "db", "failure_rate": "db", "node_memory": "sampler",
         "gpu_idle": "sampler", "deployment_latency": "latency"}


def _latest(inputs: Inputs, kind: str) -> dict:
    """The sampler's newest measurements of ``nodes`` (by name) or ``gpus`` (by
    ``node/index``): ``monitor.usage.Usage`` objects, from memory."""
    if inputs.sampler is None:
        return {}
    return dict(getattr(inputs.sampler.latest(), kind, None) or {})


class LatencyWindow:
    """The gateway's request-time histogram (``llmos_serving_request_seconds``), read at
    each evaluation and kept as snapshots, so a p99 over any recent window comes from the
    difference of two cumulative snapshots (as Prometheus' ``histogram_quantile`` over
    ``increase``). Bounded: one snapshot per evaluation, those older than ``keep_s``
    dropped."""

    def __init__(self, histogram, keep_s: float = 86400, max_snapshots: int = 10_000):
        self.histogram = histogram
        self.keep_s = keep_s
        self._snapshots: deque = deque(maxlen=max_snapshots)

    def observe(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        counts: dict[tuple, dict[float, float]] = {}
        for family in self.histogram.collect():
            for s in family.samples:
                if not s.name.endswith("_bucket"):
                    continue
                key = (s.labels.get("team"), s.labels.get("deployment"))
                le = float(s.labels["le"])
                buckets = counts.setdefault(key, {})
                buckets[le] = buckets.get(le, 0.0) + s.value
        self._snapshots.append((now, counts))
        while self._snapshots and self._snapshots[0][0] < now - self.keep_s:
            self._snapshots.popleft()

    def p99(self, window_s: float, now: float) -> dict[tuple, tuple[int, float]]:
        """Per (team, deployment): requests in the window and their p99 (seconds)."""
        if not self._snapshots:
            return {}
        latest = self._snapshots[-1][1]
        base = {}
        for at, counts in self._snapshots:  # the newest snapshot at or before the start
            if at > now - window_s:
                break
            base = counts
        out = {}
        for key, buckets in latest.items():
            old = base.get(key, {})
            delta = sorted((le, c - old.get(le, 0.0)) for le, c in buckets.items())
            total = delta[-1][1] if delta else 0
            if total > 0:
                out[key] = (int(total), _quantile(0.99, delta))
        return out

    def forget(self) -> None:
        self._snapshots.clear()


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """``histogram_quantile``: linear interpolation inside the bucket holding rank q."""
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower
