"""Prometheus metrics of one daemon (served at ``/metrics``): serving requests, time to
first token, inter-token latency, tokens, queue depth, batch size, resident models, loads
and evictions; the kernel's queue, waits, run times, outcomes, scheduling passes and
preemptions; each node's and GPU's capacity, allocation and measured use; each team's
measured use and artifact store.

Each daemon has its own registry (no process-global state), filled by the gateway as
requests pass and by collectors read at scrape time: the serving workers' latest
heartbeats, the daemon's counters (``daemon.stats``, plain data of the kernel), the
sampler's latest round (``monitor/sampler.py``, from memory) and the artifact table
(one grouped query, cached for ``ARTIFACTS_CACHE_S``). Other subsystems add theirs with
:meth:`Metrics.add_collector`.

Visibility: a series with a ``team`` label is shown to callers who may read that team
(:meth:`Metrics.render` with the caller's teams); administrators see everything. Node
and GPU series (families named ``llmos_node_*`` and ``llmos_gpu_*``) carry no team and
are shown to every authenticated caller, as ``/v1/nodes`` is. Any other series without a
team (a request refused before any deployment was found, the scheduler's pass time, the
sampler's cost, alerts) is shown to administrators only. No label ever holds a job id:
labels are team, node, gpu, state, outcome (and the serving ones).

The families this module exports besides serving (name, type, labels):
    llmos_jobs                          gauge      team, state (pending | running)
    llmos_jobs_finished_total           counter    team, outcome (succeeded|failed|cancelled)
    llmos_job_queue_wait_seconds        histogram  team
    llmos_job_run_seconds               histogram  team, outcome
    llmos_scheduler_pass_seconds        histogram  -
    llmos_scheduler_preemptions_total   counter    team
    llmos_node_cpu_cores                gauge      node (cores offered to jobs)
    llmos_node_cpu_allocated_cores      gauge      node
    llmos_node_cpu_used_cores           gauge      node (busy cores of the machine)
    llmos_node_memory_bytes             gauge      node (memory offered to jobs)
    llmos_node_memory_allocated_bytes   gauge      node
    llmos_node_memory_used_bytes        gauge      node (the machine's memory in use)
    llmos_node_gpus                     gauge      node
    llmos_node_gpus_allocated           gauge      node
    llmos_gpu_utilization_ratio         gauge      node, gpu
    llmos_gpu_memory_used_bytes         gauge      node, gpu
    llmos_gpu_memory_bytes              gauge      node, gpu
    llmos_team_cpu_used_cores           gauge      team
    llmos_team_memory_used_bytes        gauge      team
    llmos_artifact_store_bytes          gauge      team
    llmos_artifacts                     gauge      team
    llmos_sampler_cpu_seconds_total     counter    -
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections import defaultdict

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from sqlalchemy import func, select

from llmos.store.models import Artifact

PUBLIC_PREFIXES = ("llmos_node_", "llmos_gpu_")  # no team: every authenticated scraper
ARTIFACTS_CACHE_S = 10.0
MB = 1 << 20
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, workers=None, daemon=None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("llmos_serving_requests", "Serving requests by deployment, "
                                "route and HTTP status.",
                                ["team", "deployment", "route", "status"], registry=r)
        self.ttft = Histogram("llmos_serving_time_to_first_token_seconds", "From the request "
                              "reaching the gateway to the first token leaving it.",
                              ["team", "deployment"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("llmos_serving_inter_token_latency_seconds", "Between two "
                             "streamed chunks of one response.", ["team", "deployment"],
                             buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("llmos_serving_request_seconds", "Whole request duration.",
                                 ["team", "deployment", "route"], buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.prompt_tokens = Counter("llmos_serving_prompt_tokens", "Prompt tokens processed.",
                                     ["team", "deployment"], registry=r)
        self.completion_tokens = Counter("llmos_serving_completion_tokens", "Tokens generated "
                                         "(rate() of this is tokens per second).",
                                         ["team", "deployment"], registry=r)
        self.rejected = Counter("llmos_serving_rejected", "Requests refused before a worker "
                                "saw them, by reason.", ["team", "deployment", "reason"],
                                registry=r)
        if workers is not None or daemon is not None:
            r.register(_Live(workers, daemon))

    def add_collector(self, collector) -> None:
        """Register a prometheus_client collector (an object with ``collect()`` yielding
        metric families, read at scrape time) in this daemon's registry. Its team-labelled
        series are filtered per caller like every other; series without a ``team`` label
        are shown to administrators only unless their family is listed in ``PUBLIC``."""
        self.registry.register(collector)

    def render(self, teams: set[str] | None = None, public: bool = True) -> bytes:
        """The Prometheus text of the series of ``teams`` (None: every series), and with
        ``public`` the node and GPU series. Families stay (with their HELP and TYPE) even
        when none of their series is shown."""
        if teams is None:
            return generate_latest(self.registry)
        return generate_latest(_OfTeams(self.registry, frozenset(teams), public))


class _OfTeams:
    """A registry's view holding only the samples labelled with one of ``teams``."""

    def __init__(self, registry: CollectorRegistry, teams: frozenset[str],
                 public: bool = True):
        self.registry, self.teams, self.public = registry, teams, public

    def collect(self):
        for family in self.registry.collect():
            shown = Metric(family.name, family.documentation, family.type, family.unit)
            public = self.public and family.name.startswith(PUBLIC_PREFIXES)
            shown.samples = [s for s in family.samples
                             if s.labels.get("team") in self.teams
                             or (public and "team" not in s.labels)]
            yield shown


class _Live:
    """Gauges read at scrape time from the workers' heartbeats and the kernel's queue."""

    def __init__(self, workers, daemon):
        self.workers, self.daemon = workers, daemon

    def describe(self):
        return []

    def collect(self):
        resident = GaugeMetricFamily("llmos_serving_resident_models", "Models loaded in a "
                                     "serving worker.", labels=["team", "pool", "worker"])
        used = GaugeMetricFamily("llmos_serving_resident_bytes", "Memory held by loaded "
                                 "models.", labels=["team", "pool", "worker"])
        queue = GaugeMetricFamily("llmos_serving_queue_depth", "Requests waiting in an "
                                  "engine.", labels=["team", "pool", "worker", "deployment"])
        batch = GaugeMetricFamily("llmos_serving_batch_size", "Requests in an engine's last "
                                  "step.", labels=["team", "pool", "worker", "deployment"])
        loads = CounterMetricFamily("llmos_serving_model_loads", "Models loaded.",
                                    labels=["team", "pool", "worker"])
        evictions = CounterMetricFamily("llmos_serving_model_evictions", "Models unloaded.",
                                        labels=["team", "pool", "worker"])
        for w in self.workers.all() if self.workers else []:
            team, _, pool = w.pool.rpartition("/")  # the pool's key: team/name
            s, ids = w.stats or {}, [team, pool, str(w.job_id)]
            resident.add_metric(ids, len(s.get("resident", [])))
            used.add_metric(ids, s.get("used_bytes", 0))
            loads.add_metric(ids, s.get("loads", 0))
            evictions.add_metric(ids, s.get("evictions", 0))
            records = s.get("records", {})
            for m in s.get("resident", []):
                labels = ids + [m["deployment"]]
                queue.add_metric(labels, m["occupancy"]["waiting"])
                batch.add_metric(labels, records.get(m["key"], {}).get("last_batch", 0))
        yield from (resident, used, queue, batch, loads, evictions)
        if self.daemon is not None:
            jobs = GaugeMetricFamily("llmos_jobs", "Jobs in the kernel's queue by team and "
                                     "state.", labels=["team", "state"])
            with self.daemon.lock:
                pending = Tally(p.team or "" for p in self.daemon.pending.values())
                running = Tally(t.job.team or "" for t in self.daemon.running.values())
            for state, counts in (("pending", pending), ("running", running)):
                for team in sorted(counts):
                    jobs.add_metric([team, state], counts[team])
            yield jobs
            yield from _kernel_families(self.daemon.stats.snapshot())
            with self.daemon.lock:
                nodes = self.daemon.nodes.snapshot()
            yield from _capacity_families(nodes)


def _histogram(name: str, doc: str, labels: list[str], series: dict) -> HistogramMetricFamily:
    """A histogram family from ``{label values: kernel.stats.Buckets}``."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key in sorted(series):
        buckets, total = series[key].cumulative()
        family.add_metric(list(key), buckets, total)
    return family


def _kernel_families(stats: dict):
    """Queue waits, run times, outcomes, passes and preemptions (``daemon.stats``)."""
    finished = CounterMetricFamily("llmos_jobs_finished", "Jobs that reached a final state, "
                                   "by team and outcome.", labels=["team", "outcome"])
    for (team, outcome), n in sorted(stats["finished"].items()):
        finished.add_metric([team, outcome], n)
    yield finished
    yield _histogram("llmos_job_queue_wait_seconds", "Time from queued to started, per "
                     "attempt.", ["team"], {(t,): b for t, b in stats["waits"].items()})
    yield _histogram("llmos_job_run_seconds", "Run time of a job's last attempt, by "
                     "outcome.", ["team", "outcome"], stats["runs"])
    yield _histogram("llmos_scheduler_pass_seconds", "Duration of one scheduling pass.",
                     [], {(): stats["passes"]})
    preempt = CounterMetricFamily("llmos_scheduler_preemptions", "Running jobs asked to "
                                  "yield for a higher-priority job, by the victim's team.",
                                  labels=["team"])
    for team, n in sorted(stats["preemptions"].items()):
        preempt.add_metric([team], n)
    yield preempt


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _capacity_families(nodes: list[dict]):
    """What each node offers and what is allocated on it (the daemon's own accounts)."""
    fams = {
        "cpu": _gauge("llmos_node_cpu_cores", "Cores a node offers to jobs.", ["node"]),
        "cpu_a": _gauge("llmos_node_cpu_allocated_cores", "Cores allocated to jobs.",
                        ["node"]),
        "mem": _gauge("llmos_node_memory_bytes", "Memory a node offers to jobs.", ["node"]),
        "mem_a": _gauge("llmos_node_memory_allocated_bytes", "Memory allocated to jobs.",
                        ["node"]),
        "gpu": _gauge("llmos_node_gpus", "GPUs a node offers to jobs.", ["node"]),
        "gpu_a": _gauge("llmos_node_gpus_allocated", "GPUs allocated to jobs.", ["node"]),
        "gmem": _gauge("llmos_gpu_memory_bytes", "A GPU's memory.", ["node", "gpu"]),
    }
    for n in nodes:
        cap, free, name = n["capacity"], n["free"], [n["name"]]
        fams["cpu"].add_metric(name, cap["cpu"])
        fams["cpu_a"].add_metric(name, cap["cpu"] - free["cpu"])
        fams["mem"].add_metric(name, cap["memory_mb"] * MB)
        fams["mem_a"].add_metric(name, (cap["memory_mb"] - free["memory_mb"]) * MB)
        fams["gpu"].add_metric(name, cap["gpu"])
        fams["gpu_a"].add_metric(name, cap["gpu"] - free["gpu"])
        for g in n["gpus"]:
            fams["gmem"].add_metric([n["name"], str(g["index"])], g["memory_mb"] * MB)
    yield from fams.values()


class Resources:
    """Measured use (the sampler's latest round, from memory) and each team's artifact
    store (one grouped query, cached): registered by the composition root with
    :meth:`Metrics.add_collector`."""

    def __init__(self, sampler, db):
        self.sampler, self.db = sampler, db
        self._artifacts: tuple[float, list] = (-ARTIFACTS_CACHE_S, [])
        self._lock = threading.Lock()

    def describe(self):
        return []

    def collect(self):
        latest = self.sampler.latest()
        cpu = _gauge("llmos_node_cpu_used_cores", "Busy cores of the node's machine, "
                     "measured.", ["node"])
        mem = _gauge("llmos_node_memory_used_bytes", "Memory in use on the node's machine, "
                     "measured.", ["node"])
        for name, u in sorted(latest.nodes.items()):
            cpu.add_metric([name], u.cpu or 0.0)
            mem.add_metric([name], (u.memory_mb or 0.0) * MB)
        util = _gauge("llmos_gpu_utilization_ratio", "Share of time a GPU's kernels ran "
                      "(NVML), 0..1.", ["node", "gpu"])
        used = _gauge("llmos_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                      ["node", "gpu"])
        for _, u in sorted(latest.gpus.items()):
            labels = [u.extra["node"], str(u.extra["index"])]
            if u.gpu_util is not None:
                util.add_metric(labels, u.gpu_util)
            used.add_metric(labels, (u.gpu_memory_mb or 0.0) * MB)
        team_cpu = _gauge("llmos_team_cpu_used_cores", "Busy cores of a team's running "
                          "jobs, measured.", ["team"])
        team_mem = _gauge("llmos_team_memory_used_bytes", "Resident memory of a team's "
                          "running jobs, measured.", ["team"])
        by_team: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for u in latest.jobs.values():
            by_team[u.team or ""][0] += u.cpu or 0.0
            by_team[u.team or ""][1] += (u.memory_mb or 0.0) * MB
        for team, (c, m) in sorted(by_team.items()):
            team_cpu.add_metric([team], c)
            team_mem.add_metric([team], m)
        yield from (cpu, mem, util, used, team_cpu, team_mem)
        yield from self._artifact_families()
        own = CounterMetricFamily("llmos_sampler_cpu_seconds", "CPU time the resource "
                                  "sampler itself used.")
        own.add_metric([], self.sampler.cpu_seconds)
        yield own

    def _artifact_families(self):
        size = _gauge("llmos_artifact_store_bytes", "Bytes of a team's artifacts.", ["team"])
        count = _gauge("llmos_artifacts", "A team's artifacts.", ["team"])
        for team, n, total in self._artifact_rows():
            size.add_metric([team or ""], total or 0)
            count.add_metric([team or ""], n)
        yield from (size, count)

    def _artifact_rows(self) -> list:
        with self._lock:  # a burst of scrapes makes one query
            at, rows = self._artifacts
            if time.monotonic() - at < ARTIFACTS_CACHE_S:
                return rows
            with self.db.session() as s:
                rows = s.execute(select(Artifact.team, func.count(), func.sum(Artifact.size))
                                 .group_by(Artifact.team).order_by(Artifact.team)).all()
            rows = [tuple(r) for r in rows]
            self._artifacts = (time.monotonic(), rows)
            return rows
