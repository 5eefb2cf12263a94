"""Prometheus metrics of one daemon (served at ``/metrics``): serving requests, time to
first token, inter-token latency, tokens, queue depth, batch size, resident models, loads
and evictions; and the kernel's queue.

Each daemon has its own registry (no process-global state), filled by the gateway as
requests pass and by a collector that reads the serving workers' latest heartbeats at
scrape time.

Every series carries a ``team`` label: the team of the deployment, pool or jobs it counts.
A scrape shows the caller only the series of the teams it may read
(:meth:`Metrics.render` with the caller's teams); administrators see everything. A series
without a team (a request refused before any deployment was found, from a caller of
several teams) is shown to administrators only.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

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

    def render(self, teams: set[str] | None = None) -> bytes:
        """The Prometheus text of the series of ``teams`` (None: every series). Families
        stay (with their HELP and TYPE) even when none of their series is shown."""
        if teams is None:
            return generate_latest(self.registry)
        return generate_latest(_OfTeams(self.registry, frozenset(teams)))


class _OfTeams:
    """A registry's view holding only the samples labelled with one of ``teams``."""

    def __init__(self, registry: CollectorRegistry, teams: frozenset[str]):
        self.registry, self.teams = registry, teams

    def collect(self):
        for family in self.registry.collect():
            shown = Metric(family.name, family.documentation, family.type, family.unit)
            shown.samples = [s for s in family.samples if s.labels.get("team") in self.teams]
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
