"""The serving controller: keeps each pool's worker jobs running, knows which workers are
ready, and follows aliases — reconciling desired state (deployments) with actual state
(service jobs), as the daemon does for jobs.

A pool wants as many workers as the largest ``replicas`` among its deployments, or, when
one of them autoscales (``max_replicas``), as many as :mod:`serve.autoscale` decides each
pass from the load the gateway records here (:class:`Workers`). Each worker is a
``serve.worker`` job submitted for the pool's owner in the pool's team, with the pool's cpu
and memory, at the highest priority of its deployments, in the placement group
``serve:<pool key>`` spread over nodes, on nodes with its deployments' ``node_labels``;
it is restarted (by the kernel's retries, then by this controller) when it fails. A worker
on a draining node is replaced first and stopped once its replacement is ready. Workers
report their address and a heartbeat through the API; a worker whose job is no longer
running is forgotten, and one being stopped takes no new request.

Each ready worker is asked, once per model, to preload its pool's deployments (and their
canary versions) into free room, so the first request does not pay the load. A deployment
whose worker could never start (larger than any node, or than its team's quota) is refused
when it is created.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from llmos.errors import LLMOSError
from llmos.kernel.jobs import PRIORITY_RANK, JobSpec, ResourceSpec
from llmos.kernel.loop import Loop
from llmos.kernel.service import JobService
from llmos.security.rbac import Principal, Role
from llmos.serve import autoscale
from llmos.serve.deployments import DeploymentService, pool_key
from llmos.serve.envelope import Versions
from llmos.serve.worker import SECRET_HEADER
from llmos.store.models import Job, Node, User

log = logging.getLogger("llmos.serve")
PERIOD_S = 2.0
WORKER = "serve.worker"
LIVE = ("PENDING", "SCHEDULED", "RUNNING", "PREEMPTED")
GONE_NODES = ("draining", "lost")  # a worker there is replaced


@dataclass
class Worker:
    job_id: int
    pool: str  # the pool's key, team/name (:func:`pool_key`)
    url: str
    secret: str
    stats: dict = field(default_factory=dict)
    seen: float = field(default_factory=time.monotonic)
    inflight: int = 0  # requests the gateway has forwarded and not seen end
    preloaded: set[str] = field(default_factory=set)  # model keys it was asked to preload


@dataclass
class Traffic:
    """A pool's requests as the gateway sees them, for autoscaling."""

    last_request: float | None = None  # monotonic
    waiting: int = 0  # requests waiting for a ready worker
    ended: deque = field(default_factory=lambda: deque(maxlen=1000))  # (when, seconds)

    def p99(self, now: float) -> float | None:
        recent = sorted(s for t, s in self.ended if now - t <= autoscale.WINDOW_S)
        return recent[min(len(recent) - 1, int(len(recent) * 0.99))] if recent else None


class Workers:
    """The ready workers, by job id (in memory: workers register again within a heartbeat
    after a daemon restart), and each pool's traffic."""

    def __init__(self):
        self._by_job: dict[int, Worker] = {}
        self._retired: set[int] = set()  # being stopped: their heartbeats are ignored
        self._traffic: dict[str, Traffic] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)

    def heartbeat(self, job_id: int, pool: str, url: str, secret: str,
                  stats: dict) -> Worker | None:
        with self._lock:
            if job_id in self._retired:
                return None
            w = self._by_job.get(job_id)
            if w is None or w.url != url:
                w = self._by_job[job_id] = Worker(job_id, pool, url, secret)
                log.info("serving worker job %s of pool %s ready at %s", job_id, pool, url)
            w.stats, w.seen = stats or w.stats, time.monotonic()
            self._ready.notify_all()
            return w

    def of_pool(self, pool: str) -> list[Worker]:
        with self._lock:
            return [w for w in self._by_job.values() if w.pool == pool]

    def all(self) -> list[Worker]:
        with self._lock:
            return list(self._by_job.values())

    def forget(self, job_ids: set[int]) -> None:
        with self._lock:
            for j in job_ids:
                self._by_job.pop(j, None)

    def lost(self, w: Worker) -> None:
        """Forget a worker that did not answer (not a new attempt of its job, registered
        since at another address)."""
        with self._lock:
            if self._by_job.get(w.job_id) is w:
                del self._by_job[w.job_id]

    def retire(self, job_ids: set[int]) -> None:
        """Workers being stopped: no new request goes to them (those in flight finish)."""
        with self._lock:
            self._retired |= set(job_ids)
            for j in job_ids:
                self._by_job.pop(j, None)

    def keep_retired(self, live: set[int]) -> None:
        with self._lock:
            self._retired &= live

    # -- traffic (the gateway records, the controller reads) ---------------------------------

    def arrived(self, pool: str) -> None:
        with self._lock:
            self._traffic.setdefault(pool, Traffic()).last_request = time.monotonic()

    def waiting(self, pool: str, delta: int) -> None:
        with self._lock:
            self._traffic.setdefault(pool, Traffic()).waiting += delta

    def ended(self, pool: str, seconds: float) -> None:
        with self._lock:
            self._traffic.setdefault(pool, Traffic()).ended.append((time.monotonic(), seconds))

    def traffic(self, pool: str) -> tuple[float | None, int, float | None]:
        """The last request's time, the requests waiting for a worker, the recent p99."""
        with self._lock:
            t = self._traffic.get(pool) or Traffic()
            return t.last_request, t.waiting, t.p99(time.monotonic())


class Controller:
    def __init__(self, deployments: DeploymentService, jobs: JobService, workers: Workers):
        self.deployments = deployments
        self.jobs = jobs
        self.workers = workers
        self._loop = Loop("llmos-serving", PERIOD_S, self.reconcile)
        self._restart_after: dict[str, float] = {}
        self._started_for: dict[str, int] = {}  # pool -> the count its last starts aimed at
        self.problems: dict[str, str] = {}  # pool -> why its workers cannot start
        self.waiting: dict[str, str] = {}  # pool -> why a worker job has not started yet
        # pool -> {"current", "desired", "reason"}: what the last pass decided, and why
        self.scaling: dict[str, dict] = {}
        self.tuning = autoscale.Tuning.from_settings(jobs.settings)
        self._scales: dict[str, autoscale.Scale] = {}
        self._since: dict[str, float] = {}  # pool -> first seen, or last seen starting
        self.versions = Versions(deployments.registry)
        self._http = httpx.Client(timeout=5.0)
        deployments.never_starts = self.never_starts

    def never_starts(self, team: str, cpu: float, memory_mb: int, gpu: int) -> str | None:
        """Why a worker with these resources could never run in ``team``, or None."""
        request = _resources(cpu, memory_mb, gpu).to_request(memory_mb)
        return self.jobs.never_runs(request, team)

    def start(self) -> None:
        self._loop.start()

    def stop(self) -> None:
        self._loop.stop()
        self._http.close()

    def wake(self) -> None:
        self._loop.wake()

    def reconcile(self) -> None:
        for name in self.deployments.follow_aliases():
            log.info("deployment %s follows its alias to a new version", name)
        deployments = self.deployments.all()
        wanted: dict[str, list] = {}  # by pool key: two teams may use one pool name
        for d in deployments:
            wanted.setdefault(pool_key(d.team, d.pool), []).append(d)
        running = self._worker_jobs()
        alive = {j.id for jobs in running.values() for j in jobs if j.state == "RUNNING"}
        self.workers.forget({w.job_id for w in self.workers.all()} - alive)
        self.workers.keep_retired({j.id for jobs in running.values() for j in jobs})
        gone = self._gone_nodes()
        for pool_name in set(wanted) | set(running):
            self._reconcile_pool(pool_name, wanted.get(pool_name, []),
                                 running.get(pool_name, []), gone)
        for key in set(self.scaling) - set(wanted):
            for known in (self.scaling, self._scales, self._since, self._started_for):
                known.pop(key, None)
        for w in self.workers.all():
            self._preload(w, wanted.get(w.pool, []))

    def _preload(self, w: Worker, deployments: list) -> None:
        """Ask a ready worker to load its pool's models it was not asked for yet (it loads
        those that fit in free room; a request loads the rest)."""
        refs = [self.versions.ref(d, vid)
                for d in sorted(deployments, key=lambda d: -PRIORITY_RANK[d.priority])
                for vid in (d.version_id, d.canary_version_id) if vid is not None]
        for ref in refs:  # a canary's version too
            if ref.key in w.preloaded:
                continue
            try:
                self._http.post(f"{w.url}/load", content=ref.model_dump_json(),
                                headers={SECRET_HEADER: w.secret,
                                         "content-type": "application/json"})
                w.preloaded.add(ref.key)
            except httpx.HTTPError as e:  # the worker went away: forgotten next pass
                log.info("pool %s: worker job %s did not take a preload: %s", w.pool,
                         w.job_id, type(e).__name__)

    def _worker_jobs(self) -> dict[str, list[Job]]:
        """Live worker jobs by pool key: a worker serves the pool of its name in its own
        job's team. A job of another team naming an existing pool is not its worker (and
        not this controller's to stop); those of a removed pool are kept, to be stopped."""
        pools = self.deployments.pools()
        keys, named = {pool_key(p.team, p.name) for p in pools}, {p.name for p in pools}
        with self.jobs.db.session() as s:
            rows = s.scalars(select(Job).where(Job.program == WORKER, Job.state.in_(LIVE)))
            out: dict[str, list[Job]] = {}
            for j in rows:
                pool = str(j.params.get("pool"))
                key = pool_key(j.team, pool)
                if key in keys or pool not in named:
                    out.setdefault(key, []).append(j)
            return out

    def _gone_nodes(self) -> set[str]:
        """Nodes whose workers are replaced: draining (or lost)."""
        with self.jobs.db.session() as s:
            return set(s.scalars(select(Node.name).where(Node.state.in_(GONE_NODES))))

    def _want(self, key: str, deployments: list) -> tuple[int, str]:
        """How many workers the pool wants now, and why."""
        if not deployments:
            return 0, "no deployment left"
        policy = autoscale.policy_of(deployments, self.tuning)
        if policy is None:
            self._scales.pop(key, None)
            n = max(d.replicas for d in deployments)
            return n, f"fixed at {n} replica(s)"
        last = self._scales.get(key) or autoscale.initial(deployments, policy)
        scale = autoscale.decide(policy, self._load(key, starting=last.desired > 0),
                                 last, time.monotonic())
        if scale.desired != last.desired:
            log.info("pool %s: %s -> %s replica(s): %s", key, last.desired, scale.desired,
                     scale.reason)
        self._scales[key] = scale
        return scale.desired, scale.reason

    def _load(self, key: str, starting: bool) -> autoscale.Load:
        """The pool's load: requests in flight as the gateway counts them, or as its workers
        report them (running and queued in their engines) when that is more. Its idle clock
        runs from the last request, and never while replicas are wanted but none is ready
        (``starting``): a pool is not scaled to zero before it could serve once."""
        workers = self.workers.of_pool(key)
        if starting and not workers:
            self._since[key] = time.monotonic()
        inflight = sum(w.inflight for w in workers)
        reported = sum(m.get("occupancy", {}).get("running", 0)
                       + m.get("occupancy", {}).get("waiting", 0)
                       for w in workers for m in w.stats.get("resident", []))
        last, waiting, p99 = self.workers.traffic(key)
        now = time.monotonic()
        idle = now - max(last or 0.0, self._since.setdefault(key, now))
        return autoscale.Load(inflight=max(inflight, reported), waiting=waiting,
                              idle_for_s=idle, p99_s=p99)

    def _reconcile_pool(self, key: str, deployments: list, jobs: list[Job],
                        gone: set[str] = frozenset()) -> None:
        name = key  # problems, waiting and logs name the pool by its key
        want, why = self._want(key, deployments)
        # those already being stopped are leaving: they count for nothing
        jobs = sorted((j for j in jobs if not j.cancel_requested), key=lambda j: j.id)
        pending = [f"worker job {j.id} waits: {j.reason}" for j in jobs
                   if j.state == "PENDING" and j.reason]
        if pending:
            self.waiting[name] = "; ".join(pending)
        else:
            self.waiting.pop(name, None)
        ready = {w.job_id for w in self.workers.of_pool(key)}
        plan = autoscale.plan_workers(
            [autoscale.WorkerJob(j.id, j.node in gone, j.id in ready) for j in jobs], want)
        self._stop_workers(name, plan, {j.id for j in jobs if j.node in gone})
        if plan.replacing:
            why += (f"; replacing worker job(s) {', '.join(map(str, plan.replacing))} on a "
                    "draining node")
        self.scaling[name] = {"current": len(jobs) - len(plan.stop), "desired": want,
                              "reason": why}
        self._started_for[name] = min(self._started_for.get(name, 0), want)
        missing = plan.start
        # Restarting a worker that ended is throttled (a crashing worker: not a busy loop);
        # starting more than before (scaling up, a cold start) is not.
        restart = want <= self._started_for.get(name, 0) and not plan.replacing
        if missing <= 0 or (restart and time.monotonic() < self._restart_after.get(name, 0)):
            return
        team, _, pool_name = key.rpartition("/")
        pool = self.deployments.pool(team or None, pool_name)
        if pool is None:
            return
        owner = self._owner(pool)
        priority = max((d.priority for d in deployments), key=lambda p: PRIORITY_RANK[p])
        labels: dict[str, str] = {}
        for d in deployments:  # one pool's deployments agree on labels (deploy checks)
            labels.update(d.node_labels or {})
        # a pool's replicas spread over nodes: a node lost takes only part of a pool
        spec = JobSpec(program=WORKER, name=f"serve:{pool_name}",
                       params={"pool": pool_name, "budget_mb": pool.budget_mb,
                               "keep_alive_s": self.jobs.settings.serve_keep_alive_s},
                       resources=_resources(pool.cpu, pool.memory_mb, pool.gpu),
                       priority=priority, team=pool.team, max_retries=3,
                       node_labels=labels, group=f"serve:{key}", spread=True)
        self._restart_after[name] = time.monotonic() + 10.0
        self._started_for[name] = want
        try:
            for _ in range(missing):
                job = self.jobs.submit(owner, spec)
                log.info("pool %s: started worker job %s", name, job.id)
            self.problems.pop(name, None)
        except LLMOSError as e:
            self.problems[name] = f"cannot start a worker: {e.message}"
            log.warning("pool %s: %s", name, self.problems[name])

    def _stop_workers(self, pool: str, plan: autoscale.Plan, draining: set[int]) -> None:
        """Cancel the plan's workers; they take no new request from now on."""
        self.workers.retire(set(plan.stop))
        for job_id in plan.stop:
            why = "its node is draining" if job_id in draining else "scaled down"
            log.info("pool %s: stopping worker job %s (%s)", pool, job_id, why)
            self.jobs.daemon.cancel(job_id)

    def _owner(self, pool) -> Principal:
        """Worker jobs run for the pool's owner, in the pool's team."""
        with self.jobs.db.session() as s:
            user = s.scalars(select(User).where(User.name == pool.owner)).first()
        return Principal(name=pool.owner, user_id=user.id if user else None,
                         roles={pool.team: Role.DEVELOPER})


def _resources(cpu: float, memory_mb: int, gpu: int) -> ResourceSpec:
    """What one worker of a pool asks the kernel for."""
    return ResourceSpec(cpu=cpu, memory_mb=memory_mb, gpu=gpu)
