"""The serving controller: keeps each pool's worker jobs running, knows which workers are
ready, and follows aliases — reconciling desired state (deployments) with actual state
(service jobs), as the daemon does for jobs.

A pool wants as many workers as the largest ``replicas`` among its deployments; each
worker is a ``serve.worker`` job submitted for the pool's owner in the pool's team, with the
pool's cpu and memory, at the highest priority of its deployments, and restarted (by the
kernel's retries, then by this controller) when it fails. Workers report their address
and a heartbeat through the API; a worker whose job is no longer running is forgotten.

Each ready worker is asked, once per model, to preload its pool's deployments into free
room, so the first request does not pay the load. A deployment whose worker could never
start (larger than any node, or than its team's quota) is refused when it is created.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select

from llmos.errors import LLMOSError
from llmos.kernel.jobs import PRIORITY_RANK, JobSpec, ResourceSpec
from llmos.kernel.service import JobService
from llmos.security.rbac import Principal, Role
from llmos.serve.deployments import DeploymentService, pool_key
from llmos.serve.envelope import Versions
from llmos.serve.worker import SECRET_HEADER
from llmos.store.models import Job, User

log = logging.getLogger("llmos.serve")
PERIOD_S = 2.0
WORKER = "serve.worker"
LIVE = ("PENDING", "SCHEDULED", "RUNNING", "PREEMPTED")


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


class Workers:
    """The ready workers, by job id (in memory: workers register again within a heartbeat
    after a daemon restart)."""

    def __init__(self):
        self._by_job: dict[int, Worker] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)

    def heartbeat(self, job_id: int, pool: str, url: str, secret: str, stats: dict) -> Worker:
        with self._lock:
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


class Controller:
    def __init__(self, deployments: DeploymentService, jobs: JobService, workers: Workers):
        self.deployments = deployments
        self.jobs = jobs
        self.workers = workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._restart_after: dict[str, float] = {}
        self.problems: dict[str, str] = {}  # pool -> why its workers cannot start
        self.waiting: dict[str, str] = {}  # pool -> why a worker job has not started yet
        self.versions = Versions(deployments.registry)
        self._http = httpx.Client(timeout=5.0)
        deployments.never_starts = self.never_starts

    def never_starts(self, team: str, cpu: float, memory_mb: int, gpu: int) -> str | None:
        """Why a worker with these resources could never run in ``team``, or None."""
        request = _resources(cpu, memory_mb, gpu).to_request(memory_mb)
        return self.jobs.never_runs(request, team)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="llmos-serving", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._http.close()

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(PERIOD_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.reconcile()
            except Exception:  # the loop must outlive any one bad pass
                log.exception("serving controller pass failed")

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
        for pool_name in set(wanted) | set(running):
            self._reconcile_pool(pool_name, wanted.get(pool_name, []),
                                 running.get(pool_name, []))
        for w in self.workers.all():
            self._preload(w, wanted.get(w.pool, []))

    def _preload(self, w: Worker, deployments: list) -> None:
        """Ask a ready worker to load its pool's models it was not asked for yet (it loads
        those that fit in free room; a request loads the rest)."""
        for d in sorted(deployments, key=lambda d: -PRIORITY_RANK[d.priority]):
            ref = self.versions.ref(d)
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

    def _reconcile_pool(self, key: str, deployments: list, jobs: list[Job]) -> None:
        name = key  # problems, waiting and logs name the pool by its key
        want = max((d.replicas for d in deployments), default=0)
        jobs = sorted(jobs, key=lambda j: j.id)
        pending = [f"worker job {j.id} waits: {j.reason}" for j in jobs
                   if j.state == "PENDING" and j.reason]
        if pending:
            self.waiting[name] = "; ".join(pending)
        else:
            self.waiting.pop(name, None)
        for extra in jobs[want:][::-1]:
            log.info("pool %s: stopping worker job %s (scaled down)", name, extra.id)
            self.jobs.daemon.cancel(extra.id)
        missing = want - len(jobs)
        if missing <= 0 or time.monotonic() < self._restart_after.get(name, 0):
            return
        team, _, pool_name = key.rpartition("/")
        pool = self.deployments.pool(team or None, pool_name)
        if pool is None:
            return
        owner = self._owner(pool)
        priority = max((d.priority for d in deployments), key=lambda p: PRIORITY_RANK[p])
        spec = JobSpec(program=WORKER, name=f"serve:{pool_name}",
                       params={"pool": pool_name, "budget_mb": pool.budget_mb,
                               "keep_alive_s": self.jobs.settings.serve_keep_alive_s},
                       resources=_resources(pool.cpu, pool.memory_mb, pool.gpu),
                       priority=priority, team=pool.team, max_retries=3)
        self._restart_after[name] = time.monotonic() + 10.0  # a crashing worker: not a busy loop
        try:
            for _ in range(missing):
                job = self.jobs.submit(owner, spec)
                log.info("pool %s: started worker job %s", name, job.id)
            self.problems.pop(name, None)
        except LLMOSError as e:
            self.problems[name] = f"cannot start a worker: {e.message}"
            log.warning("pool %s: %s", name, self.problems[name])

    def _owner(self, pool) -> Principal:
        """Worker jobs run for the pool's owner, in the pool's team."""
        with self.jobs.db.session() as s:
            user = s.scalars(select(User).where(User.name == pool.owner)).first()
        return Principal(name=pool.owner, user_id=user.id if user else None,
                         roles={pool.team: Role.DEVELOPER})


def _resources(cpu: float, memory_mb: int, gpu: int) -> ResourceSpec:
    """What one worker of a pool asks the kernel for."""
    return ResourceSpec(cpu=cpu, memory_mb=memory_mb, gpu=gpu)
